"""Decoding heads on a classifier: DoLa, SLED and DeRa over per-layer *class* logits.

The heads of :mod:`decoding` map per-layer logits over a vocabulary to scores. A ViT classifier has
the same structure (docs/prompt_pool.md, 'Decoding heads on a classifier')::

    hidden state l (0 = embedding output, l = output of block l, N = last block)
      -> final norm -> the learner's pooling (prompt mean or CLS) -> the classifier head   (B, C)
    early  = rows 0..N-1                      (N, B, C)     ("logit lens" with the final norm)
    mature = row N, exactly the logits the learner predicts with today (greedy == today's argmax)
    ref    = the same rows of the prompt-free model (frozen ViT + the same head), for DeRa

The "vocabulary" is the classes the learner is evaluated on today: every class of the head in the
class-incremental setting, the task's classes in the task-incremental one (the logits are sliced to
them and predictions mapped back to class ids).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from decoding.errors import UserError, one_line
from decoding.head import Head
from decoding.head_spec import ModelLayout, check_head_fits, parse_head_spec
from decoding.layers import LayerLogits

GREEDY = "greedy"


def parse_eval_heads(specs: Sequence[str] | None) -> dict[str, Head]:
    """``{spec: head}`` for the ``eval_heads`` option; a bad spec is one line naming it.

    Raises:
        UserError: an entry that is not ``NAME[:key=value,...]``, or two entries with one file name.
    """
    heads: dict[str, Head] = {}
    slugs: dict[str, str] = {}
    for raw in specs or []:
        spec = str(raw).strip()
        try:
            head = parse_head_spec(spec)
        except Exception as err:  # noqa: BLE001 - unknown names, bad options, constructor errors
            raise UserError(
                f"eval_heads entry {spec!r} is not a decoding head ({one_line(str(err))}); write "
                "NAME[:key=value,...] with NAME in greedy, dola, sled, dera, e.g. sled or dera:lam=2"
            ) from None
        slug = head_slug(spec)
        if slug in slugs:
            raise UserError(
                f"eval_heads entries {slugs[slug]!r} and {spec!r} are the same head (or share the "
                f"folder name {slug!r}); keep one"
            )
        slugs[slug] = spec
        heads[spec] = head
    return heads


def head_slug(spec: str) -> str:
    """A file-name form of a head spec: ``dola:dola_layers=0,2`` -> ``dola-dola_layers=0-2``."""
    return re.sub(r"[^A-Za-z0-9_.=]+", "-", spec.strip()).strip("-") or "head"


def check_heads_fit(
    heads: dict[str, Head], num_layers: int, num_classes: int, model: str, has_reference: bool
) -> None:
    """Refuse heads that cannot run on a classifier with ``num_layers`` blocks and ``num_classes``.

    Args:
        num_layers: N, the blocks of the backbone (early layers are 0..N-1).
        num_classes: the smallest vocabulary the heads will see (classes of one evaluation).
        model: the learner's name, for the message.
        has_reference: whether the learner has a prompt-free reference (DeRa needs one).

    Raises:
        UserError: a layer id out of range, ``evolution_scale`` above the classes, DeRa without
            a reference.
    """
    layout = ModelLayout(num_layers, False, None)
    for spec, head in heads.items():
        check_head_fits(head, layout, spec, model)
        for part in (head, getattr(head, "head", None)):
            k = getattr(part, "evolution_scale", None)
            if k is not None and k > num_classes:
                raise UserError(
                    f"eval_heads entry {spec!r}: evolution_scale={k} exceeds the {num_classes} classes "
                    f"of one evaluation; write evolution_scale={num_classes} or less (e.g. "
                    f"'sled:evolution_scale={num_classes}')"
                )
        if head.uses_ref and not has_reference:
            raise UserError(
                f"eval_heads entry {spec!r}: DeRa needs a reference model and {model} has none (L2P's is "
                "its prompt-free ViT); drop the dera entry"
            )


def head_predictions(
    heads: dict[str, Head],
    x: LayerLogits,
    reference: Callable[[bool], LayerLogits] | None,
    classes: Sequence[int] | None,
) -> dict[str, Tensor]:
    """Predicted class ids (B,) of every head.

    Args:
        heads: ``{spec: head}``.
        x: early ``(N, B, C)`` and mature ``(B, C)`` class logits.
        reference: returns the reference's LayerLogits (with early rows when asked); called at most
            once, only when a head uses it.
        classes: the class ids the heads choose among (None: all C).
    """
    # sorted: a tie (e.g. the zero logits of untrained rows) goes to the lowest class id, as argmax does
    keep = None if classes is None else torch.as_tensor(sorted(classes), device=x.mature.device)
    if keep is not None:
        x = x.map(lambda t: t.index_select(-1, keep))  # (N, B, V), (B, V)
    ref = None
    if reference is not None and any(h.uses_ref for h in heads.values()):
        early = any(h.required_layers(x.num_layers, x.tied) for h in heads.values() if h.uses_ref)
        ref = reference(early)
        if keep is not None:
            ref = ref.map(lambda t: t.index_select(-1, keep))
    preds = {}
    for spec, head in heads.items():
        pred = head(x, ref if head.uses_ref else None).argmax(dim=-1)  # (B,) in 0..V-1
        preds[spec] = pred if keep is None else keep[pred]
    return preds


def class_layer_logits(early: Tensor | None, mature: Tensor, num_layers: int) -> LayerLogits:
    """Classifier LayerLogits from early rows ``(N, B, C)`` (None: no rows) and the mature ``(B, C)``."""
    rows = mature.new_zeros(0, *mature.shape) if early is None else early  # (N | 0, B, C)
    return LayerLogits(rows, mature, tuple(range(rows.shape[0])), num_layers, False)
