"""Prompt selection rules of L2P as pure tensor functions (docs/algorithms/l2p.md, steps 2-6 and eq. 4).

All tie rules are deterministic: equal scores go to the lower prompt id, as ``jax.lax.top_k`` does in
the official code (``torch.topk`` does not promise a stable order, so we sort stably instead).
"""

from __future__ import annotations

import torch
from torch import Tensor


def l2_normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    """v / sqrt(max(||v||^2, eps)) along the last dim; a zero vector maps to zero (no NaN)."""
    return v * torch.rsqrt(torch.clamp((v * v).sum(dim=-1, keepdim=True), min=eps))


def cosine_similarity(query: Tensor, keys: Tensor) -> Tensor:
    """S = n(q) n(K)^T.  (B, D), (M, D) -> (B, M)."""
    return l2_normalize(query) @ l2_normalize(keys).T


def stable_top_n(scores: Tensor, n: int, largest: bool = True) -> Tensor:
    """Indices of the n best entries per row; ties go to the lower index.  (B, M) -> (B, n)."""
    return torch.sort(scores, dim=-1, descending=largest, stable=True).indices[..., :n]


def batch_vote(idx: Tensor, pool_size: int, n: int) -> Tensor:
    """Batch-wise majority vote: the n ids selected most often in the batch, given to every row.

    Args:
        idx: per-sample selections (B, N).
        pool_size: M.
        n: how many ids to keep.

    Returns:
        (B, n) with identical rows, ordered by count (desc), ties to the lower id.
    """
    counts = torch.bincount(idx.flatten(), minlength=pool_size)  # (M,)
    top = stable_top_n(counts[None].float(), n)[0]  # (n,)
    return top[None].expand(idx.shape[0], n)


def task_prompt_ids(task: int, n: int, pool_size: int, device: torch.device | None = None) -> Tensor | None:
    """``use_prompt_mask`` ids of task t: [t*N, (t+1)*N), or None when (t+1)*N > M (the mask is off)."""
    if (task + 1) * n > pool_size:
        return None
    return torch.arange(task * n, (task + 1) * n, device=device)


def diversity_top_n(sim: Tensor, prev_counts: Tensor, n: int, smoothing: bool = False) -> Tensor:
    """Paper eq. 4: argmin over N-subsets of sum_i (1 - S_i) * h_i, with h the normalised frequency.

    Our reading of the underspecified equation (docs/algorithms/l2p.md, eq. 4): h_j = c_j / sum(c)
    where c_j counts the per-sample selections of prompt j during previous tasks; with ``smoothing``
    h_j + 1/M instead.
    Because the objective is a sum over the subset, the argmin is the n smallest per-prompt scores.
    Ties (e.g. every never-used prompt scores 0) are broken by larger similarity, then lower id.
    When no previous counts exist (task 1) this falls back to eq. 3 (plain top-N by similarity).

    Args:
        sim: cosine similarities (B, M).
        prev_counts: selection counts from previous tasks (M,).
        n: number of prompts to select.
        smoothing: add 1/M to h so that unused prompts do not all score exactly 0.

    Returns:
        (B, n) selected ids, best first.
    """
    total = prev_counts.sum()
    if total == 0:
        return stable_top_n(sim, n)
    m = prev_counts.numel()
    h = prev_counts.to(sim.dtype) / total  # (M,)
    if smoothing:
        h = h + 1.0 / m
    score = (1.0 - sim) * h  # (B, M), the paper's gamma * h
    by_sim = torch.sort(sim, dim=-1, descending=True, stable=True).indices  # secondary keys: S desc, id asc
    by_score = torch.sort(score.gather(-1, by_sim), dim=-1, stable=True).indices  # primary key: score asc
    return by_sim.gather(-1, by_score)[..., :n]
