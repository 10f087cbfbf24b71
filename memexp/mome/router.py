"""Cross-attention router: query from a hidden state -> candidate search (no grad) -> re-scored top-k.

::

    h_l (B, T, H) --pool over question tokens--> (B, H) --W_q--> q (B, heads, d_k) --batch-norm-->
    ids = index.search(q, k)            # (B*heads, k)   no gradient (exact torch or FAISS)
    s   = <q, keys[ids]> / temperature   # (B*heads, k)   differentiable: reaches W_q and the gathered keys
    w   = softmax(s) / heads             # (B, heads*k)   weights of the selected experts

Keys are an ``nn.Embedding(sparse=True)`` like the expert tables, so the re-scoring gives sparse key
gradients. Usage balancing: a batch-norm on the queries (PKM / XLM#133) spreads distinct inputs over the
key space, and an optional auxiliary loss decorrelates the queries of a batch (mean squared cosine of
distinct rows), pushing distinct facts toward distinct experts. :func:`collision_stats` counts what
happened.

Per-token routing (``per_token=True``) routes each position on its own hidden state (no pooling) and
returns ``(B, T, heads*k)`` ids for :func:`memexp.mome.layer.expert_delta_per_token`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from decoding.errors import UserError
from memexp.mome.gate import FactGate
from memexp.mome.index import IndexConfig, KeyIndex
from memexp.mome.layer import check_bank_size


@dataclass
class Routing:
    """What the router chose.

    Attributes:
        ids: ``(B, heads*k)`` (or ``(B, T, heads*k)`` per token) expert ids.
        weights: same shape; softmax weights divided by ``heads`` (they sum to 1 per input).
        aux_loss: the balancing loss (zero when disabled).
        queries: ``(B, heads, d_k)`` normalised queries (for diagnostics and index recall); the
            question's own, also when snap routing selected with a memorised fact's query.
        features: ``(B, H)`` the pooled hidden states the queries were made from (``(B*T, H)`` per
            token); :meth:`Router.route_features` routes them again without the backbone.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    aux_loss: torch.Tensor
    queries: torch.Tensor
    features: torch.Tensor


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, T, H)`` over positions where ``mask`` ``(B, T)`` is true -> ``(B, H)``."""
    m = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    count = m.sum(1).clamp_min(1.0)  # (B, 1)
    return (hidden * m).sum(1) / count


def query_decorrelation_loss(queries: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between distinct rows of ``queries`` ``(N, d)``."""
    n = queries.shape[0]
    if n < 2:
        return queries.sum() * 0.0
    qn = F.normalize(queries.float(), dim=-1)
    gram = qn @ qn.t()  # (N, N)
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return off.pow(2).sum() / (n * (n - 1))


@torch.no_grad()
def collision_stats(ids: torch.Tensor, num_experts: int) -> dict[str, float | torch.Tensor]:
    """Expert usage over a set of inputs (one row each, e.g. one per fact).

    Args:
        ids: ``(N, K)`` selected experts per input.
        num_experts: E.

    Returns:
        ``collision_rate`` (fraction of inputs sharing >= 1 expert with another input),
        ``distinct_experts``, ``max_usage`` (most inputs on one expert) and ``usage``, the ``(E,)``
        histogram of how many inputs selected each expert.
    """
    n, k = ids.shape
    rows = torch.arange(n, device=ids.device)[:, None].expand(n, k)
    pairs = torch.unique(rows.reshape(-1) * num_experts + ids.reshape(-1))  # each (input, expert) once
    pair_rows, pair_ids = pairs // num_experts, pairs % num_experts
    usage = torch.bincount(pair_ids, minlength=num_experts)  # (E,)
    shared = usage[pair_ids] > 1
    colliding = torch.zeros(n, dtype=torch.bool, device=ids.device).index_fill_(0, pair_rows[shared], True)
    return {
        "collision_rate": colliding.float().mean().item() if n else 0.0,
        "distinct_experts": int((usage > 0).sum()),
        "max_usage": int(usage.max()) if n else 0,
        "usage": usage.cpu(),
    }


class Router(nn.Module):
    """Selects k experts per input (per head) by cross-attention of a query over the expert keys.

    Args:
        hidden_size: width of the hidden state the query is computed from.
        num_experts: E (one key each).
        k: experts per head.
        key_dim: d_k.
        heads: independent query heads; each selects k experts, so ``heads * k`` in all.
        balance: ``batchnorm`` (normalise queries over the batch) or ``none``.
        aux_weight: weight of the query-decorrelation loss (0 disables it).
        temperature: softmax temperature of the re-scored keys.
        per_token: route every position separately instead of pooling over the question.
        index: settings of the candidate search (exact torch search by default).
        sparse: sparse key gradients (for ``SparseAdam``); False for dense optimisers.
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        k: int = 32,
        key_dim: int = 64,
        heads: int = 1,
        balance: str = "batchnorm",
        aux_weight: float = 0.0,
        temperature: float = 1.0,
        per_token: bool = False,
        index: IndexConfig | None = None,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        check_bank_size(num_experts, 1, k)
        if balance not in ("batchnorm", "none"):
            raise UserError(f"balance={balance!r} is unknown; choose 'batchnorm' or 'none'")
        if heads < 1 or key_dim < 1:
            raise UserError(f"heads={heads} and key_dim={key_dim} must be >= 1")
        self.num_experts, self.k, self.key_dim, self.heads = num_experts, k, key_dim, heads
        self.balance, self.aux_weight, self.temperature, self.per_token = (
            balance,
            aux_weight,
            temperature,
            per_token,
        )
        self.query = nn.Linear(hidden_size, heads * key_dim)
        self.norm = nn.BatchNorm1d(heads * key_dim, affine=False) if balance == "batchnorm" else None
        self.keys = nn.Embedding(num_experts, key_dim, sparse=sparse)  # (E, d_k)
        with torch.no_grad():
            self.keys.weight.normal_(0.0, key_dim**-0.5)
        self.index = KeyIndex(index)
        self.gate = FactGate(heads * key_dim)  # off until fitted (memexp.mome.gate)

    def make_queries(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(N, H)`` pooled hidden states -> ``(N, heads, d_k)`` queries."""
        q = self.query(pooled.to(self.query.weight.dtype))  # (N, heads*d_k)
        if self.norm is not None:
            if self.training and q.shape[0] > 1:
                q = self.norm(q)  # batch statistics; updates the running ones
            else:  # one input, or inference: the running statistics
                q = F.batch_norm(
                    q, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps
                )
        return q.view(-1, self.heads, self.key_dim)

    def select(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Search without gradients, then re-score the gathered keys with gradients.

        Args:
            queries: ``(N, heads, d_k)``.

        Returns:
            ids ``(N, heads*k)`` and weights ``(N, heads*k)``.
        """
        n = queries.shape[0]
        flat = queries.reshape(n * self.heads, self.key_dim)  # (N*heads, d_k)
        _, ids = self.index.search(flat, self.k, keys=self.keys.weight)  # (N*heads, k), no grad
        gathered = self.keys(ids)  # (N*heads, k, d_k)
        scores = torch.einsum("nd,nkd->nk", flat, gathered.to(flat.dtype)) / self.temperature  # (N*heads, k)
        weights = scores.softmax(-1) / self.heads
        return ids.view(n, self.heads * self.k), weights.view(n, self.heads * self.k)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> Routing:
        """Route a batch.

        Args:
            hidden: ``(B, T, H)`` hidden state of the query layer.
            mask: ``(B, T)`` question tokens to pool over (all tokens when None); per-token routing
                ignores it.
        """
        bsz, seq, _ = hidden.shape
        if self.per_token:
            routing = self.route_features(hidden.reshape(bsz * seq, -1))  # every position on its own
            routing.ids, routing.weights = routing.ids.view(bsz, seq, -1), routing.weights.view(bsz, seq, -1)
            return routing
        if mask is None:
            mask = torch.ones(bsz, seq, dtype=torch.bool, device=hidden.device)
        return self.route_features(masked_mean(hidden, mask))

    def route_features(self, features: torch.Tensor, gated: bool = True) -> Routing:
        """Route pooled features ``(N, H)`` (one row per question, or per token when ``per_token``).

        With snap routing on (:meth:`FactGate.snap <memexp.mome.gate.FactGate.snap>`), a query inside the
        snap radius of a memorised fact's query selects with that query instead; the gate decides on the
        question's own query (``gated=False``: as with the gate off, every question keeps its experts).
        """
        q = self.make_queries(features)  # (N, heads, d_k)
        chosen = q
        if self.gate.snapping and not self.per_token:  # near a memorised fact: exactly that fact's experts
            chosen = self.gate.snap(q.reshape(q.shape[0], -1))[0].view_as(q)
        ids, weights = self.select(chosen)
        if gated and self.gate.active and not self.per_token:  # far from every fact: no experts
            weights = weights * self.gate.open(q.reshape(q.shape[0], -1))[:, None].to(weights.dtype)
        aux = q.sum() * 0.0
        if self.aux_weight > 0 and self.training and not self.per_token:
            aux = self.aux_weight * query_decorrelation_loss(q.reshape(q.shape[0], -1))
        return Routing(ids=ids, weights=weights, aux_loss=aux, queries=q, features=features)

    # ---- phase-2 calibration of the frozen router ------------------------------------------------
    def _pre_norm_queries(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, D)`` outputs of the query projection (before batch-norm), computed batch by batch."""
        return torch.cat([self.query(f.to(self.query.weight.dtype)).float() for f in batches])

    @torch.no_grad()
    def whiten(self, batches: Sequence[torch.Tensor], eps: float = 1e-6, shrink: float = 0.0) -> None:
        """Fold a ZCA whitening of the facts' queries into the query projection.

        Batch-norm scales each query dimension but leaves them correlated: the pooled questions of
        similar facts span a few directions, so their queries pick the same experts (measured: 200 facts,
        k = 8 of 4,096 experts, 616 distinct experts and one expert shared by 20 facts). With
        ``W' = S W`` and ``b' = S (b - mu)``, ``S = Cov(q)^(-1/2)``, the facts' queries are white, so
        distinct facts spread over distinct experts (demo: 927 distinct experts, at most 9 facts on one).

        Args:
            batches: the facts' pooled question features (:attr:`Routing.features`), ``(B_i, H)`` each.
            eps: ridge relative to the mean query variance (numerical safety only).
            shrink: a larger ridge, relative to the mean query variance, that replaces ``eps`` when > 0:
                ``S = (Cov + shrink * mean variance * I)^(-1/2)`` whitens the strong directions that
                separate facts but leaves the weak ones (where paraphrases of one fact differ) near a
                common scale instead of blowing them up. 0 (the default) is the plain whitening.
        """
        if not (math.isfinite(shrink) and shrink >= 0):
            raise UserError(
                f"whiten shrink={shrink!r} must be a finite number >= 0 (0 = plain whitening, e.g. 0.1)"
            )
        q = self._pre_norm_queries(batches)  # (N, D)
        w, b = self.query.weight.float(), self.query.bias.float()
        mu = q.mean(0)
        cov = torch.cov(q.T, correction=0).double()  # (D, D)
        scale = cov.diagonal().mean().clamp_min(1e-30)  # ridges are relative: query scales vary by backbone
        ridge = (shrink if shrink > 0 else eps) * scale
        evals, evecs = torch.linalg.eigh(cov)
        s = (evecs @ torch.diag((evals.clamp_min(0) + ridge).rsqrt()) @ evecs.T).float()  # (D, D)
        self.query.weight.copy_((s @ w).to(self.query.weight.dtype))
        self.query.bias.copy_((s @ (b - mu)).to(self.query.bias.dtype))

    @torch.no_grad()
    def calibrate_norm(self, batches: Sequence[torch.Tensor]) -> None:
        """Set the query batch-norm's running statistics from the facts' queries, batch by batch.

        Phase 1 is short, so the running averages (momentum 0.1) are still far from the facts' query
        statistics; frozen as they are, they would send most facts to the same experts. The statistics
        become the average of the per-batch statistics (batch-norm with cumulative averaging; batches of
        one row are skipped); pass all facts as one batch for their exact statistics.

        Args:
            batches: the facts' pooled question features (:attr:`Routing.features`), ``(B_i, H)`` each.
        """
        if self.norm is None:
            return
        self.norm.reset_running_stats()
        momentum, training = self.norm.momentum, self.norm.training
        self.norm.momentum = None  # cumulative average over the batches
        self.norm.train()
        try:
            for features in batches:
                if features.shape[0] > 1:
                    self.norm(self.query(features.to(self.query.weight.dtype)))
        finally:
            self.norm.momentum = momentum
            self.norm.train(training)
