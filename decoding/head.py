"""The head interface: per-layer logits (and a reference model's, for DeRa) -> scores over the vocabulary.

A head is a small callable object::

    scores = head(x, ref=None)          # x: LayerLogits or a tensor (N + 1, *batch, V)
    layers = head.required_layers(N, tied)   # early layers the caller must project

``*batch`` is any shape: ``(B,)`` while generating, ``(B, P)`` for teacher-forced scoring, or
``(batch,)`` of a classifier's class logits (prompt_pool) -- heads never need an HF model. The
scores are what a greedy decoder would argmax: logits processors (repetition penalty) and sampling
warpers run *after* the head (as in both references: they see SLED's LB and DoLa's -inf).
:meth:`Head.mc_scores` gives the per-token scores summed by multiple-choice scoring (raw, or
``log_softmax`` with ``post_softmax``).

The registry of heads by name lives in :mod:`decoding.head_spec` (``make_head`` from typed options,
``parse_head_spec`` from an option string such as ``dera:lam=2,head=sled``); this module knows no head
class, so the heads import it and nothing imports back. :mod:`decoding.presets` adds per-task defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor

from decoding.layers import LayerLogits, as_layer_logits

__all__ = ["Head"]


class Head:
    """Base class: a head maps per-layer logits to scores over the vocabulary."""

    name = "head"
    uses_ref = False

    def required_layers(self, num_layers: int, tied: bool = False) -> tuple[int, ...]:
        """Early layers (hidden-state ids) this head reads; the mature layer N is always given."""
        return ()

    def __call__(self, x: LayerLogits | Tensor, ref: LayerLogits | Tensor | None = None) -> Tensor:
        """Scores ``(*batch, V)`` from per-layer logits (``ref`` only for DeRa)."""
        return self.scores(as_layer_logits(x), None if ref is None else as_layer_logits(ref))

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        raise NotImplementedError

    def mc_scores(
        self, x: LayerLogits | Tensor, ref: LayerLogits | Tensor | None = None, post_softmax: bool = False
    ) -> Tensor:
        """Per-token scores for multiple-choice scoring: the head's scores, or their log_softmax."""
        s = self(x, ref)
        return s.float().log_softmax(-1) if post_softmax else s

    def settings(self) -> dict[str, Any]:
        """The head's public settings: its constructor's arguments as stored (no state of a call)."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"
