"""Continual-learning metrics on the accuracy matrix (formulas: docs/algorithms/l2p.md, 'Metrics').

Convention: ``A[i, t]`` = accuracy on task i's test set after training task t (rows = task, columns =
time, 0-based). Entries with i > t are evaluations of tasks not yet trained (used by forward transfer);
functions that do not need them ignore them. Mammoth/Avalanche store the transpose (`A.T`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(a: Tensor) -> Tensor:
    a = torch.as_tensor(a, dtype=torch.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"accuracy matrix must be square (tasks x tasks), got shape {tuple(a.shape)}.")
    return a


def average_accuracy(a: Tensor, t: int | None = None) -> float:
    """ACC_t = (1/t) sum_{i<=t} A[i, t]; t defaults to the last task."""
    a = _check(a)
    t = a.shape[0] - 1 if t is None else t
    return float(a[: t + 1, t].mean())


def forgetting(a: Tensor, t: int | None = None, kind: str = "max") -> float:
    """Average forgetting after task t over tasks i < t.

    kinds:
        ``max`` (L2P code, Mammoth): max_{i<=t'<=t} A[i,t'] - A[i,t]  (>= 0).
        ``chaudhry`` (Chaudhry et al. 2018): max over i<=t'<=t-1 (can be < 0).
        ``first`` (Avalanche): A[i,i] - A[i,t].
    Returns NaN when t == 0 (nothing to forget).
    """
    a = _check(a)
    t = a.shape[0] - 1 if t is None else t
    if t == 0:
        return math.nan
    vals = []
    for i in range(t):
        if kind == "max":
            ref = a[i, i : t + 1].max()
        elif kind == "chaudhry":
            ref = a[i, i:t].max()
        elif kind == "first":
            ref = a[i, i]
        else:
            raise ValueError(f"unknown forgetting kind {kind!r}; use 'max', 'chaudhry' or 'first'.")
        vals.append(ref - a[i, t])
    return float(torch.stack(vals).mean())


def backward_transfer(a: Tensor) -> float:
    """BWT = (1/(T-1)) sum_{i<T} (A[i,T] - A[i,i]) (GEM, Mammoth; = -forgetting('first') at T)."""
    a = _check(a)
    n = a.shape[0]
    if n < 2:
        return math.nan
    return float(torch.stack([a[i, n - 1] - a[i, i] for i in range(n - 1)]).mean())


def forward_transfer(a: Tensor, baseline: Tensor | None) -> float:
    """FWT = (1/(T-1)) sum_{i>=1} (A[i,i-1] - b_i), b_i = accuracy of the untrained model on task i.

    Needs the evaluations of future tasks (A[i, i-1]) and the pre-training baseline; NaN otherwise.
    """
    a = _check(a)
    n = a.shape[0]
    if baseline is None or n < 2 or torch.isnan(a[1:, :-1].diagonal()).any():
        return math.nan
    b = torch.as_tensor(baseline, dtype=torch.float64)
    return float(torch.stack([a[i, i - 1] - b[i] for i in range(1, n)]).mean())


def learning_accuracy(a: Tensor) -> float:
    """(1/T) sum_i A[i,i] (official JAX code)."""
    return float(_check(a).diagonal().mean())


def average_incremental_accuracy(correct: Tensor, total: Tensor) -> float:
    """PyCIL average incremental accuracy in %: (1/T) sum_t a_t, a_t pooled over all seen test samples.

    Args:
        correct: (T, T) number of correct predictions on task i after task t (same layout as A).
        total: (T,) test-set size of each task.
    """
    c, n = torch.as_tensor(correct, dtype=torch.float64), torch.as_tensor(total, dtype=torch.float64)
    tasks = c.shape[0]
    return 100.0 * float(torch.stack([c[: t + 1, t].sum() / n[: t + 1].sum() for t in range(tasks)]).mean())


def summarise(a: Tensor, baseline: Tensor | None = None) -> dict[str, float]:
    """All metrics of the final column in one dict (accuracies in the units of A)."""
    return {
        "average_accuracy": average_accuracy(a),
        "forgetting": forgetting(a, kind="max"),
        "forgetting_chaudhry": forgetting(a, kind="chaudhry"),
        "forgetting_first": forgetting(a, kind="first"),
        "backward_transfer": backward_transfer(a),
        "forward_transfer": forward_transfer(a, baseline),
        "learning_accuracy": learning_accuracy(a),
    }
