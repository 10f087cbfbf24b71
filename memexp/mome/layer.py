"""Expert tables and the expert layer: a frozen ``nn.Linear`` plus a routed sum of rank-r LoRA experts.

::

            x (B, T, d_in)
            |------------------------------.
            v                              v
     +-------------+        gather A[ids] (B, k*r, d_in)     <- only gathered rows get gradients
     | W (frozen)  |        h = x @ A^T   (B, T, k*r)           (nn.Embedding(sparse=True))
     +-------------+        h = h * repeat(w, r)                 w = softmax router weights (B, k)
            |               gather B[ids] (B, k*r, d_out)
            |               delta = h @ B (B, T, d_out)
            v                              |
            + <----------------------------'   y = W x + scale * sum_i w_i B_i A_i x

Each expert site stores two stacked tables, ``A`` of shape ``(E, r * d_in)`` and ``B`` of shape
``(E, r * d_out)`` (row ``i`` is expert ``i``'s down/up projection, row-major ``(r, d)``), so a gather of
the selected rows plus two batched matmuls computes all k experts at once: no Python loop over experts
and never a per-token ``(T, k, r, d)`` tensor. With ``sparse=True`` the backward produces sparse row
gradients, so a step touches only the selected experts (``torch.optim.SparseAdam``).

Bytes per expert (per site): ``r * (d_in + d_out) * element_size``; see :func:`bytes_per_expert`.
Example: d_in = d_out = 4096, r = 1, bf16 -> 16 KiB per site; 1M experts -> 16.4 GB per site.

Routing state (which experts, with what weights) is shared by all expert layers of one model through a
:class:`RoutingState` written by the router before the sites run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from decoding.errors import UserError


@dataclass
class RoutingState:
    """Selection shared by all expert layers of one model.

    Attributes:
        ids: ``(B, K)`` expert ids per sequence (per-question routing) or ``(B, T, K)`` per token.
        weights: same shape as ``ids``; the softmax weights of the selected experts.
        enabled: False switches every expert off (the layer returns ``W x`` exactly).
    """

    ids: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    enabled: bool = True


def bytes_per_expert(rank: int, d_in: int, d_out: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes one expert occupies at one site: ``rank * (d_in + d_out) * element_size``."""
    return rank * (d_in + d_out) * torch.empty((), dtype=dtype).element_size()


def check_bank_size(num_experts: int, rank: int, k: int | None = None) -> None:
    """Refuse impossible bank settings with a message that names the fix.

    Raises:
        UserError: ``num_experts < 1``, ``rank <= 0`` or ``k`` outside ``1..num_experts``.
    """
    for name, value in (("num_experts", num_experts), ("rank", rank), ("k", k)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise UserError(f"mome.{name}={value!r} must be an integer")
    if num_experts < 1:
        raise UserError(f"mome.num_experts={num_experts} must be >= 1 (e.g. 4096)")
    if rank <= 0:
        raise UserError(f"mome.rank={rank} must be a positive integer (1..64 are typical expert ranks)")
    if k is not None and not 1 <= k <= num_experts:
        raise UserError(
            f"mome.k={k} experts per input cannot be selected from num_experts={num_experts}; "
            f"use 1 <= k <= {num_experts} or enlarge the bank"
        )


def expert_delta(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    a_table: nn.Embedding,
    b_table: nn.Embedding,
    rank: int,
) -> torch.Tensor:
    """Per-sequence routed LoRA update ``sum_i w_i B_i A_i x`` by gather + bmm.

    Args:
        x: ``(B, T, d_in)`` inputs of the site.
        ids: ``(B, K)`` selected expert ids per sequence.
        weights: ``(B, K)`` their weights.
        a_table: ``(E, r * d_in)`` down projections.
        b_table: ``(E, r * d_out)`` up projections.
        rank: r.

    Returns:
        ``(B, T, d_out)``.
    """
    bsz, k = ids.shape
    d_in = a_table.embedding_dim // rank
    d_out = b_table.embedding_dim // rank
    a = a_table(ids).view(bsz, k * rank, d_in)  # (B, K*r, d_in)
    b = b_table(ids).view(bsz, k * rank, d_out)  # (B, K*r, d_out)
    h = torch.bmm(x, a.transpose(1, 2).to(x.dtype))  # (B, T, K*r)
    h = h * weights.to(x.dtype).repeat_interleave(rank, dim=1)[:, None, :]  # (B, T, K*r)
    return torch.bmm(h, b.to(x.dtype))  # (B, T, d_out)


def expert_delta_per_token(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    a_table: nn.Embedding,
    b_table: nn.Embedding,
    rank: int,
) -> torch.Tensor:
    """Per-token routed update, computed over the batch's unique experts (no ``(T, K, r, d)`` tensor).

    The ``N = B*T`` tokens select ``U`` distinct experts in all. ``H = x @ A_U^T`` is ``(N, U*r)``; each
    token keeps its own K columns (gather), weights them, scatters them back into a ``(N, U, r)`` buffer
    that is zero elsewhere, and one matmul with ``B_U`` ``(U*r, d_out)`` sums the experts. Cost is
    ``O(N * U * r * (d_in + d_out))`` with ``O(N * U * r)`` workspace: efficient while the batch selects few
    distinct experts (short prompts, small k); per-question routing (:func:`expert_delta`) is the default.

    Args:
        x: ``(B, T, d_in)``.
        ids: ``(B, T, K)``.
        weights: ``(B, T, K)``.
        a_table, b_table, rank: as in :func:`expert_delta`.

    Returns:
        ``(B, T, d_out)``.
    """
    bsz, seq, d_in = x.shape
    k = ids.shape[-1]
    uniq, inverse = torch.unique(ids, return_inverse=True)  # (U,), (B, T, K)
    n_u = uniq.numel()
    d_out = b_table.embedding_dim // rank
    a = a_table(uniq).view(n_u * rank, d_in)  # (U*r, d_in)
    b = b_table(uniq).view(n_u * rank, d_out)  # (U*r, d_out)
    flat = x.reshape(bsz * seq, d_in)  # (N, d_in)
    h = (flat @ a.t().to(x.dtype)).view(bsz * seq, n_u, rank)  # (N, U, r)
    inv = inverse.reshape(bsz * seq, k)  # (N, K)
    picked = h.gather(1, inv[:, :, None].expand(-1, -1, rank))  # (N, K, r)
    picked = picked * weights.reshape(bsz * seq, k, 1).to(x.dtype)  # (N, K, r)
    routed = torch.zeros_like(h).scatter_add(1, inv[:, :, None].expand(-1, -1, rank), picked)  # (N, U, r)
    out = routed.view(bsz * seq, n_u * rank) @ b.to(x.dtype)  # (N, d_out)
    return out.view(bsz, seq, d_out)


class ExpertLinear(nn.Module):
    """A frozen ``nn.Linear`` with a bank of E rank-r LoRA experts beside it.

    ``y = W x + scale * sum_i w_i B_i A_i x`` over the experts selected in ``routing``. ``A`` starts
    random (std ``1/sqrt(d_in)``), ``B`` at zero, so a fresh layer equals the frozen one.

    Args:
        base: the wrapped linear layer; its parameters are frozen here.
        num_experts: E.
        rank: r.
        routing: state shared with the router (one per model).
        sparse: sparse row gradients for the tables (use ``SparseAdam``); False gives dense gradients.
        scale: multiplier of the expert sum (LoRA's alpha / r).
        dtype: storage dtype of the tables (float32 default; bfloat16 halves the bank).
        init_std: std of ``A``; ``1/sqrt(d_in)`` when None.
    """

    def __init__(
        self,
        base: nn.Linear,
        num_experts: int,
        rank: int,
        routing: RoutingState,
        sparse: bool = True,
        scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_bank_size(num_experts, rank)
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scale = scale
        self.routing = routing
        d_in, d_out = base.in_features, base.out_features
        device = base.weight.device
        self.A = nn.Embedding(
            num_experts, rank * d_in, sparse=sparse, device=device, dtype=dtype
        )  # (E, r*d_in)
        self.B = nn.Embedding(
            num_experts, rank * d_out, sparse=sparse, device=device, dtype=dtype
        )  # (E, r*d_out)
        with torch.no_grad():
            self.A.weight.normal_(0.0, init_std if init_std is not None else d_in**-0.5)
            self.B.weight.zero_()

    @property
    def num_experts(self) -> int:
        """E."""
        return self.A.num_embeddings

    @property
    def in_features(self) -> int:
        """``d_in`` of the wrapped layer (so code that reads ``.in_features`` keeps working)."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """``d_out`` of the wrapped layer."""
        return self.base.out_features

    def bytes_per_expert(self) -> int:
        """Bytes one expert occupies at this site."""
        return bytes_per_expert(self.rank, self.in_features, self.out_features, self.A.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        state = self.routing
        if not state.enabled or state.ids is None:
            return y
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])  # (B, T, d_in)
        if state.ids.dim() == 2:
            delta = expert_delta(x3, state.ids, state.weights, self.A, self.B, self.rank)
        else:
            delta = expert_delta_per_token(x3, state.ids, state.weights, self.A, self.B, self.rank)
        return y + self.scale * delta.reshape(*shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, scale={self.scale}"
