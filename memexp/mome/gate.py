"""Fact gate: memory experts act only on questions whose query lies near a memorised fact's query.

A MoME router sends *every* question to some experts, including questions that were never memorised;
those experts were trained to emit other facts' answers, so the tuned model's behaviour on unrelated
inputs drifts (measured on the demo: held-out answer NLL +14% with the experts on). The gate keeps the
frozen backbone's behaviour exactly on such inputs::

    d(q)   = min_f || q - g_f ||                 g: (F, D) frozen queries of the memorised facts
    open   = d(q) <= radius                      radius = rel_radius * median_f min_{f' != f} || g_f - g_f' ||
    w     <- w * open                            closed: every expert weight is 0, so y = W x exactly

Queries are deterministic once the router is frozen (phase 2), so a memorised question has distance 0
and the gate is always open for it; a different question is open only if it is closer to some fact than
``rel_radius`` times the typical spacing between facts. The gate is off (``rel_radius = 0``) unless
:class:`memexp.mome.MoMEConfig` sets ``gate``; it is not in the Lamini paper.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 65_536  # fact queries per distance block: B x CHUNK floats at a time


def min_distances(queries: torch.Tensor, facts: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Euclidean distance of each query ``(N, D)`` to its nearest row of ``facts`` ``(F, D)`` -> ``(N,)``.

    Args:
        exclude_self: ``queries is facts``; ignore the zero distance of row i to itself.
    """
    best = torch.full((queries.shape[0],), float("inf"), device=queries.device)
    q = queries.float()
    for start in range(0, facts.shape[0], CHUNK):
        block = torch.cdist(q, facts[start : start + CHUNK].float())  # (N, chunk)
        if exclude_self:
            rows = torch.arange(start, start + block.shape[1], device=q.device)
            block[rows, rows - start] = float("inf")
        best = torch.minimum(best, block.min(1).values)
    return best


class FactGate(nn.Module):
    """Frozen fact queries and an absolute radius; both are buffers, so they travel with checkpoints.

    Args:
        dim: query width (``heads * key_dim``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("queries", torch.zeros(0, dim))
        self.register_buffer("radius", torch.zeros(()))

    @property
    def active(self) -> bool:
        return self.queries.shape[0] > 0 and float(self.radius) > 0

    @torch.no_grad()
    def fit(self, queries: torch.Tensor, rel_radius: float) -> None:
        """Store the memorised facts' queries ``(F, D)`` and set the radius relative to their spacing.

        ``rel_radius`` is validated by :class:`memexp.mome.MoMEConfig` (``gate >= 0``); 0 leaves the gate
        off, and a single fact (no spacing) gets an unbounded radius.
        """
        self.queries = queries.detach().float().clone()
        if rel_radius == 0:
            self.radius = torch.zeros((), device=queries.device)
        elif queries.shape[0] < 2:
            self.radius = torch.tensor(float("inf"), device=queries.device)
        else:
            spacing = min_distances(self.queries, self.queries, exclude_self=True).median()
            self.radius = rel_radius * spacing.clamp_min(1e-6)

    def open(self, queries: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: whether each query ``(N, D)`` is within the radius of a memorised fact."""
        if not self.active:
            return torch.ones(queries.shape[0], dtype=torch.bool, device=queries.device)
        return min_distances(queries, self.queries) <= self.radius

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Take the stored number of fact queries (the buffer's first dimension varies)."""
        saved = state_dict.get(prefix + "queries")
        if saved is not None:
            self.queries = torch.empty_like(saved, device=self.queries.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
