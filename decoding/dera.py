"""DeRa head: decoding-time realignment, ``lam * (aligned - ref) + ref`` on raw logits.

DeRa (arXiv 2402.02992) approximates the model aligned with KL strength beta / lam by mixing, per
token, the raw logits of the aligned model and of its reference (docs/algorithms/decoding.md, 'DeRa')::

    h = lam * h_aligned + (1 - lam) * h_ref       (computed as torch.lerp(ref, aligned, lam))

``lam = 0`` is the reference model, ``lam = 1`` the aligned model (both exact: ``torch.lerp`` is
exact at its end points), ``0 < lam < 1`` interpolates, ``lam > 1`` extrapolates (finite for
finite logits; the notebook uses 3). ``lam < 0`` is refused. Mixing raw logits and mixing
log-probabilities give the same distribution (the log-normalisers only shift each row).

The reference is either a second model with the same tokenizer, or the same model with its
adapters / memory experts switched off (``generate(..., ref_model=model.disable_adapter)``); the
generation loop keeps one KV cache per pass.

**Composition.** ``DeRa(lam, head=H)`` mixes *every* computed layer (the early rows and the mature
row) and hands the mixture to ``H``: ``H = Greedy()`` (default) is plain DeRa; ``H = SLED()`` evolves
the mixed logits; ``H = DoLa()`` contrasts mixed layers. Layer-wise heads need both passes to have
the same layers (true for "same model, adapters off"); otherwise use the greedy inner head.

**Processor order** (docs/algorithms/decoding.md, 'DeRa', processor order). Here: mix -> head ->
repetition penalty on the mixture -> sampling warpers. HF's processor-based DeRa (the notebook's
``CombineLogitsProcessor``) applies the penalty to the *aligned* logits before mixing;
``generate(..., penalty_before_mix=True)`` reproduces that order for compatibility.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decoding.greedy import Greedy
from decoding.head import Head
from decoding.layers import LayerLogits, as_layer_logits


def mix_logits(aligned: Tensor, ref: Tensor, lam: float) -> Tensor:
    """``lam * aligned + (1 - lam) * ref``, truncated to the common vocabulary (padded lm_heads)."""
    v = min(aligned.shape[-1], ref.shape[-1])
    return torch.lerp(ref[..., :v].to(aligned.dtype), aligned[..., :v], lam)


class DeRa(Head):
    """Decoding-time realignment.

    Args:
        lam: the realignment strength lambda >= 0 (1 = aligned model, 0 = reference model).
        head: the head applied to the mixed per-layer logits (Greedy by default).
    """

    name = "dera"
    uses_ref = True

    def __init__(self, lam: float = 1.0, head: Head | None = None) -> None:
        if not lam >= 0:
            raise ValueError(f"DeRa lam={lam} must be >= 0 (0 = reference, 1 = aligned, > 1 extrapolates)")
        if isinstance(head, DeRa):
            raise ValueError("DeRa cannot wrap another DeRa head")
        self.lam = float(lam)
        self.head = head if head is not None else Greedy()

    def required_layers(self, num_layers: int, tied: bool = False) -> tuple[int, ...]:
        return self.head.required_layers(num_layers, tied)

    def mix(self, x: LayerLogits, ref: LayerLogits) -> LayerLogits:
        """Mix the mature rows and every early row (layers must agree when the inner head uses them)."""
        need = self.head.required_layers(x.num_layers, x.tied)
        if need and (ref.layers != x.layers or ref.num_layers != x.num_layers):
            raise ValueError(
                f"DeRa with {type(self.head).__name__} needs the same layers in both passes, got "
                f"{x.layers} (N={x.num_layers}) and {ref.layers} (N={ref.num_layers}); "
                "use the greedy inner head"
            )
        early = mix_logits(x.early, ref.early, self.lam) if need else x.early[..., : ref.mature.shape[-1]]
        mature = mix_logits(x.mature, ref.mature, self.lam)
        return LayerLogits(early, mature, x.layers, x.num_layers, x.tied)

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        if ref is None:
            raise ValueError(
                "DeRa needs the reference model's logits: head(x, ref=...), generate(ref_model=...)"
            )
        return self.head(self.mix(x, ref))

    def mc_scores(
        self, x: LayerLogits | Tensor, ref: LayerLogits | Tensor | None = None, post_softmax: bool = False
    ) -> Tensor:
        if ref is None:
            raise ValueError("DeRa needs the reference model's logits (ref=...)")
        return self.head.mc_scores(self.mix(as_layer_logits(x), as_layer_logits(ref)), None, post_softmax)
