"""Greedy head: the mature logits z^N unchanged (argmax = greedy; the sampler may sample them)."""

from __future__ import annotations

from torch import Tensor

from decoding.head import Head
from decoding.layers import LayerLogits


class Greedy(Head):
    """The baseline: scores = ``outputs.logits`` of the last layer."""

    name = "greedy"

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        return x.mature  # (*batch, V)
