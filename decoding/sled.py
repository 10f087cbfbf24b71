"""SLED head: self-logits evolution towards a latent distribution estimated from early layers.

The reference (``JayZhang42/SLED`` @ 00067af; docs/algorithms/decoding.md, 'SLED') at one position,
with z^N the mature logits, z^l the early logits of each candidate layer l, k = ``evolution_scale``,
alpha = ``evolution_rate``, LB = ``evolution_lower_bound``, T_op = ``op_T``::

    T        = top-k indices of softmax(z^N)
    d_l      = z^l - z^N                             (model dtype)
    g_{l,j}  = softmax(z^l) - e_j,  j in T           (the CE gradient; the reference builds (L, k, V))
    c_{l,j}  = cosine(g_{l,j}, d_l), eps 1e-8 per norm
    m_{l,j}  = max(c_{l,j}, 0)^2;  S_l = sum_j m_{l,j};  P_l = m_l / S_l  (0 if S_l = 0)
    w_l      = S_l / sum S  (S_l if the sum is 0);    P_lat = sum_l w_l P_l on T, 0 elsewhere
    z        = z^N;  for t < T_op:  z -= alpha (1 - t / T_op) (softmax(z) + (-P_lat))
    out      = z on T, LB elsewhere

The fast path never builds the (L, k, V) gradients. With g = p - e_j and d, the cosine needs only
``p.d``, ``|p|^2`` and ``|d|^2`` per layer plus gathers at T (O(L V + L k) instead of O(L k V)). They are
written so that nothing cancels when an early layer is nearly one-hot on a token a (p_a -> 1, e.g.
layer 0 of a tied model; the naive formula is off by > 2.0 there): the sums leave the entry a out,
and ``1 - p_a`` is formed from p_a directly::

    |g_j|^2 = sum_{i != j} p_i^2 + (1 - p_j)^2
    g_j . d = sum_{i != a} p_i d_i + p_a d_a - d_j        (j != a)
            = sum_{i != a} p_i d_i - (1 - p_a) d_a        (j == a)

The three O(V) sums run in the model dtype (float32 elementwise + cascade sum, as accurate as the
reference's own float32 ``cosine_similarity``; ``reduce_dtype=torch.float64`` gives the plain
all-float64 remedy, ~4x slower on CPU); the O(L k) cosine assembly is always float64. A deliberate
difference (docs/algorithms/decoding.md, 'SLED', "Cancellation"), tested to agree with the float64
variant and the literal reference.

With ``op_T == 1`` only the top-k entries are evolved (``z_j - alpha (p^N_j - P_lat_j)``, the
same arithmetic as the loop). Rows are independent, so any batch shape works (per-row top-k, P_lat
and LB); the reference only ever handles batch 1.

Defaults per task (the reference's run scripts, :mod:`decoding.presets`): generation / GSM8K / StrategyQA
(2, 10, -1000, 1), TruthfulQA MC (2, 50, -100, 10, raw-logit score), FACTOR (2, 10, -2500, 1,
log_softmax score). Candidate layers default to all early layers 0..N-1, layer 0 included (also for
tied models, unlike HF DoLa). SLED composes with DeRa (``DeRa(lam, head=SLED())`` evolves the
DeRa-mixed per-layer logits) and with sampling (the generation loop samples the evolved scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from decoding.head import Head
from decoding.layers import LayerLogits, check_layers

EPS = 1e-8


def _rowdot(x: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Row-wise dot products over V, ``(L, R, V) x2 -> (L, R, 1)`` in ``dtype``.

    Elementwise product + (cascade) sum: ~5x faster than a batched BLAS dot on the benchmark CPU.
    """
    if dtype != x.dtype:
        x, y = x.to(dtype), y.to(dtype)
    return (x * y).sum(-1, keepdim=True)


def latent_distribution(
    early: Tensor, mature: Tensor, topk: Tensor, reduce_dtype: torch.dtype = torch.float32
) -> Tensor:
    """P_lat on the top-k tokens by the closed-form cosine, ``(R, k)`` float64.

    Args:
        early: ``(L, R, V)`` early logits (model dtype).
        mature: ``(R, V)`` mature logits (model dtype).
        topk: ``(R, k)`` top-k token ids of the mature distribution.
        reduce_dtype: dtype of the three O(V) dot products (float32 BLAS by default, float64 for
            the plain all-float64 variant); the cosine itself is always assembled in float64.
    """
    f64 = torch.float64
    rd = torch.promote_types(reduce_dtype, early.dtype)
    p = torch.softmax(early, dim=-1)  # (L, R, V) in the model dtype, as the reference
    d = early - mature[None]  # (L, R, V) in the model dtype, as the reference
    a = early.argmax(-1, keepdim=True)  # (L, R, 1) the only entry that can be near 1
    p_rest = p.scatter(-1, a, 0.0)  # (L, R, V) p with entry a left out
    sq_rest = _rowdot(p_rest, p_rest, rd).to(f64)  # (L, R, 1) sum_{i != a} p_i^2
    pd_rest = _rowdot(p_rest, d, rd).to(f64)  # (L, R, 1) sum_{i != a} p_i d_i
    d_norm = _rowdot(d, d, rd).to(f64).sqrt()  # (L, R, 1)
    p_a, d_a = p.gather(-1, a).to(f64), d.gather(-1, a).to(f64)  # (L, R, 1)
    idx = topk[None].expand(p.shape[0], -1, -1)  # (L, R, k)
    p_j, d_j = p.gather(-1, idx).to(f64), d.gather(-1, idx).to(f64)  # (L, R, k)
    is_a = idx == a
    q = torch.where(is_a, sq_rest, sq_rest + p_a * p_a - p_j * p_j)  # sum_{i != j} p_i^2
    g_norm = (q + (1.0 - p_j) ** 2).sqrt()  # (L, R, k)
    g_dot_d = torch.where(is_a, pd_rest - (1.0 - p_a) * d_a, pd_rest + p_a * d_a - d_j)
    cos = g_dot_d / (g_norm.clamp_min(EPS) * d_norm.clamp_min(EPS))  # (L, R, k)
    return combine_layers(cos)


def combine_layers(cos: Tensor) -> Tensor:
    """Steps 5-8: squared positive cosines -> per-layer distributions -> weighted mix ``(R, k)``."""
    m = cos.clamp_min(0) ** 2  # (L, R, k)
    s = m.sum(-1, keepdim=True)  # (L, R, 1) pre-normalisation sums
    p_l = torch.where(s != 0, m / torch.where(s != 0, s, 1), 0)  # (L, R, k)
    total = s.sum(0, keepdim=True)  # (1, R, 1)
    w = torch.where(total != 0, s / torch.where(total != 0, total, 1), s)  # (L, R, 1)
    return (w * p_l).sum(0)  # (R, k)


class SLED(Head):
    """Self logits evolution decoding (reference parameter names).

    Args:
        evolution_rate: alpha, the step size of the evolution.
        evolution_scale: k, the number of top tokens of the mature layer that are evolved.
        evolution_lower_bound: LB, the score given to every token outside the top-k.
        op_T: evolution iterations (1 in generation and FACTOR, 10 in TruthfulQA scoring).
        layers: candidate early layers; all of 0..N-1 when None.
    """

    name = "sled"

    def __init__(
        self,
        evolution_rate: float = 2.0,
        evolution_scale: int = 10,
        evolution_lower_bound: float = -1000.0,
        op_T: int = 1,
        layers: Sequence[int] | None = None,
    ) -> None:
        if evolution_scale < 1:
            raise ValueError(f"evolution_scale={evolution_scale} must be >= 1")
        if op_T < 1:
            raise ValueError(f"op_T={op_T} must be >= 1")
        self.evolution_rate = float(evolution_rate)
        self.evolution_scale = int(evolution_scale)
        self.evolution_lower_bound = float(evolution_lower_bound)
        self.op_T = int(op_T)
        self.layers = None if layers is None else tuple(layers)

    def required_layers(self, num_layers: int, tied: bool = False) -> tuple[int, ...]:
        return check_layers(range(num_layers) if self.layers is None else self.layers, num_layers)

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        v = x.mature.shape[-1]
        k = self.evolution_scale
        if k > v:
            raise ValueError(f"evolution_scale={k} exceeds the vocabulary size {v}; use k <= {v}")
        cands = self.required_layers(x.num_layers, x.tied)
        mature = x.mature.reshape(-1, v)  # (R, V)
        early = x.select(cands).reshape(len(cands), -1, v)  # (L, R, V)
        p_n = torch.softmax(mature, dim=-1)  # (R, V)
        topk = p_n.topk(k, dim=-1).indices  # (R, k)
        p_lat = latent_distribution(early, mature, topk).float().to(mature.dtype)  # (R, k)
        alpha = self.evolution_rate
        if self.op_T == 1:  # only T matters: z_T - alpha * (p_T + (-P_lat))
            z_t = mature.gather(-1, topk) - alpha * (p_n.gather(-1, topk) + (-p_lat))  # (R, k)
        else:
            p_lat_full = torch.zeros_like(mature).scatter_(-1, topk, p_lat)  # (R, V)
            z = mature.clone()
            for t in range(self.op_T):
                rate = alpha * (1 - t / self.op_T)
                z.sub_(rate * (torch.softmax(z, dim=-1) + (-p_lat_full)))
            z_t = z.gather(-1, topk)
        out = torch.full_like(mature, self.evolution_lower_bound).scatter_(-1, topk, z_t)  # (R, V)
        return out.reshape(x.mature.shape)
