"""Expert-usage balance: how facts share experts, what random assignment would give, and key placement.

Measurement (one row of expert ids per fact)::

    report = usage_report(ids, num_experts)                 # ids: (N, K)
    expected = random_assignment(N, K, num_experts)          # each fact: K distinct experts, uniformly
    report["distinct_experts"] >= expected["distinct_experts"]

Reported for both: ``distinct_experts``, ``sharing_any`` (fraction of facts sharing >= 1 expert with
another fact), ``sharing_all`` (fraction of facts whose every expert is also selected by one single other
fact: the two cannot be told apart by their experts) and ``no_private`` (fraction of facts without an expert
of their own). Under random assignment the demo's 200 facts x 8 of 4,096 experts use 1,325 distinct
experts, 95.5% of facts share some expert, and sharing all is ~1e-20.

Key placement (:func:`place_keys`, used by :class:`memexp.mome.tuning.MoMETuning` at phase-2 start): a
router that picks the top-k keys by inner product shares experts more than random assignment does, since
keys of large norm and queries close in angle attract many facts (measured on the demo: 941 distinct
experts, not 1,325). Phase 2 freezes the router anyway, so at its start every query row (one per fact and
head) gets its own experts, greedily, best candidates first::

    for each query q_m (in order):   ids_m = its k best-scoring experts that have capacity left
                                     (capacity = ceil(M * k / E) query rows per expert; 1 when E >= M k)
    key_e <- alpha * normalize(mean of the unit queries assigned to e + jitter)    for every assigned e
    alpha  = the largest key norm, so a placed key outscores every unplaced one for its own query

With capacity 1 each fact's top-k is then exactly its own experts (N k distinct experts, nothing shared);
paraphrases, whose queries lie near the fact's, select the nearest fact's experts. The caller re-routes
after placement, so the cached ids are always what the router really selects.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from memexp.mome.index import exact_topk


@torch.no_grad()
def usage_report(ids: torch.Tensor, num_experts: int, max_pairs: int = 50_000_000) -> dict[str, float]:
    """Expert sharing among inputs (one row each, e.g. one per fact).

    Args:
        ids: ``(N, K)`` selected experts per input (repeats within a row count once).
        num_experts: E.
        max_pairs: ``sharing_all`` compares each input with the other users of its least used expert;
            above this many comparisons in all it is NaN instead.

    Returns:
        ``distinct_experts``, ``max_usage`` (most inputs on one expert), and the fractions of inputs
        ``sharing_any``, ``sharing_all`` and ``no_private`` (see the module docstring).
    """
    n = ids.shape[0]
    if n == 0:
        return dict.fromkeys(("distinct_experts", "max_usage", "sharing_any", "sharing_all", "no_private"), 0)
    rows = torch.arange(n)[:, None].expand_as(ids).reshape(-1)
    pairs = torch.unique(rows * num_experts + ids.cpu().reshape(-1))  # each (input, expert) once, sorted
    fact, expert = pairs // num_experts, pairs % num_experts
    usage = torch.bincount(expert, minlength=num_experts)  # (E,) inputs per expert
    shared = usage[expert] > 1  # (P,)
    per_fact = torch.bincount(fact, minlength=n)  # (N,) distinct experts of each input
    shared_slots = torch.bincount(fact, weights=shared.double(), minlength=n)  # (N,)
    sharing_all = float("nan")
    if int(usage[expert].sum()) <= max_pairs:
        sharing_all = _sharing_all(fact.numpy(), expert.numpy(), usage.numpy(), n)
    return {
        "distinct_experts": int((usage > 0).sum()),
        "max_usage": int(usage.max()),
        "sharing_any": float((shared_slots > 0).double().mean()),
        "sharing_all": sharing_all,
        "no_private": float((shared_slots == per_fact).double().mean()),
    }


def _sharing_all(fact: np.ndarray, expert: np.ndarray, usage: np.ndarray, n: int) -> float:
    """Fraction of inputs whose experts one other input also holds (``fact``, ``expert``: sorted pairs)."""
    sets = np.split(expert, np.flatnonzero(np.diff(fact)) + 1)  # experts of input i (every input has some)
    order = np.argsort(expert, kind="stable")
    bounds = np.searchsorted(expert[order], np.arange(len(usage) + 1))  # users of e: order[b[e] : b[e+1]]
    count = 0
    for f, mine in enumerate(sets):
        rarest = mine[np.argmin(usage[mine])]
        members = set(mine.tolist())
        others = fact[order[bounds[rarest] : bounds[rarest + 1]]]
        count += any(g != f and members <= set(sets[g].tolist()) for g in others)
    return count / n


def _log_comb(n: int, r: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def random_assignment(num_facts: int, slots: int, num_experts: int) -> dict[str, float]:
    """Expected :func:`usage_report` when each of ``num_facts`` picks ``slots`` distinct experts uniformly.

    Exact for ``distinct_experts``, ``sharing_any``, ``sharing_all`` (another fact picked the same set)
    and ``no_private`` (inclusion-exclusion over the fact's experts that nobody else picked).
    """
    n, k, e = num_facts, slots, num_experts
    others = n - 1
    distinct = e * -math.expm1(n * math.log1p(-k / e)) if k < e else float(e)

    def p_others_avoid(j: int) -> float:  # P(no other fact picks any of j given experts)
        if e - j < k:
            return 0.0
        return math.exp(others * (_log_comb(e - j, k) - _log_comb(e, k)))

    no_private = sum((-1) ** j * math.comb(k, j) * p_others_avoid(j) for j in range(k + 1))
    p_same = math.exp(-_log_comb(e, k))
    return {
        "distinct_experts": distinct,
        "sharing_any": 1.0 - p_others_avoid(k),
        "sharing_all": -math.expm1(others * math.log1p(-p_same)) if p_same < 1 else float(others > 0),
        "no_private": max(0.0, no_private),
    }


def simulate_random_assignment(
    num_facts: int, slots: int, num_experts: int, trials: int = 20, seed: int = 0
) -> dict[str, float]:
    """Mean :func:`usage_report` over ``trials`` random assignments (checks :func:`random_assignment`)."""
    g = torch.Generator().manual_seed(seed)
    reports = []
    for _ in range(trials):
        ids = torch.rand(num_facts, num_experts, generator=g).topk(slots, dim=1).indices  # (N, K) distinct
        reports.append(usage_report(ids, num_experts))
    return {name: float(np.mean([r[name] for r in reports])) for name in reports[0]}


def warn_if_shared(rows: int, k: int, num_experts: int) -> None:
    """Warn when ``rows`` (facts x heads) of ``k`` experts each cannot all own their experts.

    :func:`place_keys` then shares experts between facts, which on SmolLM2 kept facts from reaching 0%
    hallucination (they undid each other's updates).
    """
    if rows * k > num_experts:
        warnings.warn(
            f"balance_keys: {rows} facts x heads x k={k} = {rows * k} expert slots > num_experts="
            f"{num_experts}, so facts share experts; set mome.num_experts >= {rows * k} to give each its own",
            stacklevel=2,
        )


@torch.no_grad()
def place_keys(
    queries: torch.Tensor, keys: torch.Tensor, k: int, candidates: int | None = None, jitter: float = 1e-2
) -> torch.Tensor:
    """Give every query row its own experts and move their keys onto it (in place).

    Args:
        queries: ``(M, d)`` the routed queries, one row per fact and head.
        keys: ``(E, d)`` the key table (written in place).
        k: experts per row.
        candidates: best-scoring experts considered per row before falling back to any expert with
            capacity left (``4 k`` when None).
        jitter: relative size of a fixed random perturbation of each placed key, so a row's k keys do
            not tie.

    Returns:
        ``(M, k)`` int64 ids assigned to each row.
    """
    m, e = queries.shape[0], keys.shape[0]
    capacity = max(1, math.ceil(m * k / e))
    n_cand = min(e, candidates or 4 * k)
    cand = exact_topk(queries.to(keys.dtype), keys, n_cand)[1].cpu().numpy()  # (M, C)
    usage = np.zeros(e, dtype=np.int64)
    assigned = np.empty((m, k), dtype=np.int64)
    for row in range(m):
        chosen = [int(x) for x in cand[row] if usage[x] < capacity][:k]
        if len(chosen) < k:  # the candidates are full: the least used experts with room (room >= M k)
            room = np.flatnonzero(usage < capacity)
            room = room[~np.isin(room, chosen)]
            chosen += room[np.argsort(usage[room], kind="stable")][: k - len(chosen)].tolist()
        if len(chosen) < k:  # only this row's own experts have room left: share beyond capacity
            chosen += [int(x) for x in cand[row] if x not in chosen][: k - len(chosen)]
        usage[chosen] += 1
        assigned[row] = chosen
    ids = torch.from_numpy(assigned).to(keys.device)  # (M, k)
    unit = F.normalize(queries.float(), dim=-1)  # (M, d)
    flat = ids.reshape(-1)  # (M*k,)
    target = torch.zeros(e, keys.shape[1], device=keys.device)  # (E, d) sum of the assigned unit queries
    target.index_add_(0, flat, unit.repeat_interleave(k, dim=0).to(keys.device))
    placed = torch.unique(flat)
    g = torch.Generator().manual_seed(1)
    noise = F.normalize(torch.randn(placed.numel(), keys.shape[1], generator=g), dim=-1).to(keys.device)
    alpha = keys.float().norm(dim=-1).max()
    new = alpha * F.normalize(F.normalize(target[placed], dim=-1) + jitter * noise, dim=-1)  # (P, d)
    keys[placed] = new.to(keys.dtype)
    return ids
