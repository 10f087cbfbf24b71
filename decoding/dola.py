"""DoLa head: contrast the mature layer with a dynamically chosen premature layer.

Exactly HF transformers v4.43-v4.52 ``_dola_decoding``, removed from transformers 5.x
(docs/algorithms/decoding.md, 'DoLa'):

1. z_N = mature logits (``.float()``); z_l = early logits of each candidate, in the model dtype.
2. one candidate: M = it. Else, with A_l = (p_N + p_l) / 2, the "JS" score
   ``js_l = 1/2 [mean_v A_l (log A_l - log p_N) + mean_v A_l (log A_l - log p_l)]`` (a mean over V,
   not the textbook JS) and M = argmax js (first of a tie).
3. relative-top filter (0.1): s = log_softmax; where ``s_N < max s_N + log 0.1``:
   ``s_M := -1e-3, s_N := -inf``; scores = s_N - s_M.

HF picks one layer for the whole batch (the batch mean of js); here each row picks its own layer by
default so that a batch gives row by row the tokens of batch 1; ``batch_mean=True``
restores HF's choice. ``relative_top=0`` gives the raw difference ``z_N - z_M`` of the original
repo's generation.

Candidate buckets (``dola_layers``), N blocks, ``start`` = 0 untied / 2 tied (1 if N = 2, 0 if N = 1)::

    'low'  = [start] if start == N // 2 else range(start, N // 2, 2) (N <= 40) / range(start, 20, 2)
    'high' = range(N // 2, N, 2) (N <= 40) / range(N - 20, N, 2)
    list   = [i for i in list if i < N]   (the mature id N is dropped as in HF; ids < 0 or > N are
             rejected, where HF silently lets negatives through and drops ids > N)

Multiple-choice scoring (:meth:`DoLa.mc_scores`, the original repo's ``lm_score``): per
position M as above; diff = log_softmax(z_N) - log_softmax(z_M), optionally log_softmax'ed again
(``post_softmax``); if ``relative_top > 0`` tokens below the threshold get -1000.

Guidance of the paper: ``'high'`` for short answers (TruthfulQA), ``'low'`` for long reasoning
(GSM8K, StrategyQA, FACTOR). The original repo generates with repetition penalty 1.2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from decoding.head import Head
from decoding.layers import LayerLogits, check_layers


def dola_candidates(dola_layers: str | Sequence[int], num_layers: int, tied: bool) -> tuple[int, ...]:
    """HF's candidate premature layers for ``'low'``, ``'high'`` or an explicit list."""
    n = num_layers
    if isinstance(dola_layers, str):
        start = (2 if n > 2 else 1 if n == 2 else 0) if tied else 0
        if dola_layers == "low":
            if start == n // 2:
                return (start,)
            return tuple(range(start, n // 2, 2) if n <= 40 else range(start, 20, 2))
        if dola_layers == "high":
            return tuple(range(n // 2, n, 2) if n <= 40 else range(n - 20, n, 2))
        raise ValueError(f"dola_layers={dola_layers!r}: use 'low', 'high' or a list of layer ids")
    negative = [i for i in dola_layers if int(i) < 0]
    if negative:
        raise ValueError(f"dola_layers {negative} are negative; use ids in 0..{n - 1} (0 = embeddings)")
    beyond = [int(i) for i in dola_layers if int(i) > n]
    if beyond:
        raise ValueError(f"dola_layers {beyond} are out of range: the model has layers 0..{n} ({n} = mature)")
    layers = tuple(int(i) for i in dola_layers if int(i) < n)
    if not layers:
        raise ValueError(f"no dola_layers below the mature layer {n} in {list(dola_layers)}")
    return layers


def dola_divergence(mature: Tensor, early: Tensor) -> Tensor:
    """HF's "JS" score per candidate and row: ``(C, R)`` from ``mature (R, V)`` and ``early (C, R, V)``."""
    p_n = F.softmax(mature, dim=-1)  # (R, V)
    p_l = F.softmax(early, dim=-1)  # (C, R, V)
    a = 0.5 * (p_n[None] + p_l)  # (C, R, V)
    kl1 = F.kl_div(F.log_softmax(mature, dim=-1)[None], a, reduction="none").mean(-1)  # (C, R)
    kl2 = F.kl_div(F.log_softmax(early, dim=-1), a, reduction="none").mean(-1)  # (C, R)
    return 0.5 * (kl1 + kl2)


def relative_top_filter(
    scores: Tensor, baseline: Tensor, relative_top: float = 0.1, base_filter_value: float = -1e-3
) -> tuple[Tensor, Tensor]:
    """HF's ``_relative_top_filter``: log_softmax both; below max + log(relative_top) -> -inf / base value."""
    s = scores.log_softmax(dim=-1)
    b = baseline.log_softmax(dim=-1)
    thr = (s.max(dim=-1).values + math.log(relative_top)).unsqueeze(-1)  # (R, 1)
    low = s < thr
    return s.masked_fill(low, -float("inf")), b.masked_fill(low, base_filter_value)


class DoLa(Head):
    """Decoding by contrasting layers (HF v4.43-v4.52 semantics).

    Args:
        dola_layers: ``'low'``, ``'high'`` or a list of early-layer ids (0 = embeddings).
        relative_top: the relative-top filter (HF fixes 0.1; 0 = raw contrast ``z_N - z_M``).
        batch_mean: HF's single layer choice for the whole batch (off: per row, batch-invariant).
        post_softmax: in :meth:`mc_scores`, log_softmax the contrast again (FACTOR default).
    """

    name = "dola"

    def __init__(
        self,
        dola_layers: str | Sequence[int] = "high",
        relative_top: float = 0.1,
        batch_mean: bool = False,
        post_softmax: bool | None = None,
    ) -> None:
        if isinstance(dola_layers, str) and dola_layers not in ("low", "high"):
            raise ValueError(f"dola_layers={dola_layers!r}: use 'low', 'high' or a list of layer ids")
        if not 0.0 <= relative_top < 1.0:
            raise ValueError(f"relative_top={relative_top} must be in [0, 1)")
        self.dola_layers = dola_layers if isinstance(dola_layers, str) else tuple(dola_layers)
        self.relative_top = relative_top
        self.batch_mean = batch_mean
        self.post_softmax = post_softmax
        self.last_choice: Tensor | None = None  # (*batch) chosen layer ids of the last call

    def required_layers(self, num_layers: int, tied: bool = False) -> tuple[int, ...]:
        return check_layers(dola_candidates(self.dola_layers, num_layers, tied), num_layers)

    def _premature(self, x: LayerLogits) -> tuple[Tensor, Tensor, Tensor]:
        """``(z_N (R, V) float, z_M (R, V), chosen layer ids (R,))`` with rows flattened."""
        cands = self.required_layers(x.num_layers, x.tied)
        v = x.mature.shape[-1]
        mature = x.mature.reshape(-1, v).float()  # (R, V)
        early = x.select(cands).reshape(len(cands), -1, v)  # (C, R, V)
        rows = torch.arange(mature.shape[0], device=mature.device)
        if len(cands) == 1:
            pick = torch.zeros_like(rows)
        else:
            js = dola_divergence(mature, early)  # (C, R)
            pick = js.mean(-1).argmax().expand_as(rows) if self.batch_mean else js.argmax(0)
        ids = torch.tensor(cands, device=mature.device)[pick]
        self.last_choice = ids.reshape(x.mature.shape[:-1])
        return mature, early[pick, rows], ids

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        mature, base, _ = self._premature(x)
        if self.relative_top > 0:
            mature, base = relative_top_filter(mature, base, self.relative_top)
        return (mature - base).reshape(x.mature.shape)  # (*batch, V)

    def mc_scores(
        self, x: LayerLogits | Tensor, ref: LayerLogits | Tensor | None = None, post_softmax: bool = False
    ) -> Tensor:
        from decoding.layers import as_layer_logits

        x = as_layer_logits(x)
        mature, base, _ = self._premature(x)
        final = mature.log_softmax(-1)  # (R, V)
        diff = final - base.float().log_softmax(-1)
        if self.post_softmax if self.post_softmax is not None else post_softmax:
            diff = diff.log_softmax(-1)
        if self.relative_top > 0:
            thr = final.max(-1, keepdim=True).values + math.log(self.relative_top)
            diff = diff.masked_fill(final < thr, -1000.0)
        return diff.reshape(x.mature.shape)
