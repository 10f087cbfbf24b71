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

Snap routing (``MoMEConfig.snap``, off by default) reuses the stored queries to choose *which* experts a
question gets, not whether it gets any::

    f*     = argmin_f || q - g_f ||
    q'     = g_f*  if || q - g_f* || <= snap_radius  else q      snap_radius = rel_snap * the same spacing
    ids, w = top-k(q')                                            exactly fact f*'s experts and weights

A reworded question whose query lands near its fact's then uses that fact's whole expert set instead of
its own top-k (which shares only part of it). The gate, when on, still decides on the question's own
query ``q``.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 65_536  # fact queries per distance block: B x CHUNK floats at a time


def nearest(
    queries: torch.Tensor, facts: torch.Tensor, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and row of the nearest row of ``facts`` ``(F, D)`` for each query ``(N, D)``.

    Args:
        queries: ``(N, D)``.
        facts: ``(F, D)``, searched ``CHUNK`` rows at a time.
        exclude_self: ``queries is facts``; ignore the zero distance of row i to itself.

    Returns:
        ``(N,)`` Euclidean distances and ``(N,)`` long rows of ``facts`` (the first one on ties).
    """
    best = torch.full((queries.shape[0],), float("inf"), device=queries.device)
    where = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    q = queries.float()
    for start in range(0, facts.shape[0], CHUNK):
        block = torch.cdist(q, facts[start : start + CHUNK].float())  # (N, chunk)
        if exclude_self:
            rows = torch.arange(start, start + block.shape[1], device=q.device)
            block[rows, rows - start] = float("inf")
        value, row = block.min(1)
        better = value < best
        best, where = torch.where(better, value, best), torch.where(better, row + start, where)
    return best, where


def min_distances(queries: torch.Tensor, facts: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Euclidean distance of each query ``(N, D)`` to its nearest row of ``facts`` ``(F, D)`` -> ``(N,)``.

    Args:
        queries: ``(N, D)``.
        facts: ``(F, D)``.
        exclude_self: ``queries is facts``; ignore the zero distance of row i to itself.
    """
    return nearest(queries, facts, exclude_self)[0]


class FactGate(nn.Module):
    """Frozen fact queries, the gate's absolute radius and the snap radius; all are buffers, so they
    travel with checkpoints.

    Args:
        dim: query width (``heads * key_dim``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("queries", torch.zeros(0, dim))
        self.register_buffer("radius", torch.zeros(()))
        self.register_buffer("snap_radius", torch.zeros(()))

    @property
    def active(self) -> bool:
        """Whether the gate closes the experts to questions far from every fact."""
        return self.queries.shape[0] > 0 and float(self.radius) > 0

    @property
    def snapping(self) -> bool:
        """Whether questions near a fact take that fact's query for expert selection."""
        return self.queries.shape[0] > 0 and float(self.snap_radius) > 0

    def spacing(self) -> torch.Tensor:
        """Median over the stored facts of the distance to the nearest other fact (inf for one fact)."""
        if self.queries.shape[0] < 2:
            return torch.tensor(float("inf"), device=self.queries.device)
        return min_distances(self.queries, self.queries, exclude_self=True).median().clamp_min(1e-6)

    @torch.no_grad()
    def fit(self, queries: torch.Tensor, rel_radius: float, rel_snap: float = 0.0) -> None:
        """Store the memorised facts' queries ``(F, D)`` and set both radii relative to their spacing.

        Args:
            queries: ``(F, D)`` the facts' frozen queries.
            rel_radius: gate radius / spacing (``MoMEConfig.gate``; 0 leaves the gate off).
            rel_snap: snap radius / spacing (``MoMEConfig.snap``; 0 leaves snapping off).

        Both are validated by :class:`memexp.mome.MoMEConfig` (``>= 0``); a single fact (no spacing)
        gets unbounded radii.
        """
        self.queries = queries.detach().float().clone()
        spacing = self.spacing() if rel_radius > 0 or rel_snap > 0 else torch.ones(())
        self.radius = (rel_radius * spacing if rel_radius > 0 else torch.zeros(())).to(queries.device)
        self.set_snap(rel_snap, spacing)

    @torch.no_grad()
    def set_snap(self, rel_snap: float, spacing: torch.Tensor | None = None) -> None:
        """Set the snap radius to ``rel_snap`` times the facts' spacing (0 turns snapping off).

        Args:
            rel_snap: snap radius relative to :meth:`spacing` (``inf`` snaps every question).
            spacing: the stored facts' spacing when already known.
        """
        if rel_snap <= 0:
            self.snap_radius = torch.zeros((), device=self.queries.device)
            return
        spacing = self.spacing() if spacing is None else spacing
        self.snap_radius = (rel_snap * spacing).to(self.queries.device)

    def snap(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``(N, D)`` with each one inside the snap radius replaced by its nearest fact's query.

        Returns:
            the queries to select experts with ``(N, D)`` (``queries``' dtype), and ``(N,)`` bool: which
            were snapped.
        """
        if not self.snapping:
            return queries, torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
        dist, row = nearest(queries, self.queries)
        inside = dist <= self.snap_radius
        snapped = torch.where(inside[:, None], self.queries[row].to(queries.dtype), queries)
        return snapped, inside

    def open(self, queries: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: whether each query ``(N, D)`` is within the radius of a memorised fact."""
        if not self.active:
            return torch.ones(queries.shape[0], dtype=torch.bool, device=queries.device)
        return min_distances(queries, self.queries) <= self.radius

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Take the stored number of fact queries (the buffer's first dimension varies); a state written
        before snap routing existed has no ``snap_radius`` and loads with snapping off."""
        saved = state_dict.get(prefix + "queries")
        if saved is not None:
            self.queries = torch.empty_like(saved, device=self.queries.device)
            state_dict.setdefault(prefix + "snap_radius", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
