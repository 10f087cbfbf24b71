"""The loss below which facts are recalled exactly, estimated from per-fact (loss, exact) records.

Two estimates on any loss axis (summed answer NLL per fact, or per token):

- ``separating``: the threshold tau of the decision stump "recalled iff loss < tau" that classifies the
  most records correctly (ties: the smallest such tau); the empirical threshold curve's step.
- ``safe``: the lowest loss of any record that is *not* recalled; every record strictly below it is
  recalled. The model-free bound (docs/algorithms/memorisation.md) says greedy recall is guaranteed
  when the summed NLL is below ln 2, so on the summed axis ``safe`` >= ln 2 whenever the metric code is right.

:func:`binned_exact` gives the empirical curve P(exact | loss bin) that the plots overlay with ln 2 and
the entropy of a random answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LN2 = math.log(2)


def separating_threshold(loss: Sequence[float], exact: Sequence[bool]) -> tuple[float, float]:
    """Best stump threshold and its accuracy.

    Candidates are the midpoints between consecutive distinct losses plus both ends; a record with
    ``loss < tau`` is predicted recalled.

    Returns:
        (tau, accuracy); tau is ``nan`` for no records.
    """
    x = np.asarray(loss, dtype=float)
    y = np.asarray(exact, dtype=bool)
    if x.size == 0:
        return math.nan, math.nan
    values = np.unique(x)
    candidates = np.concatenate(
        [[values[0]], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]]
    )
    # correct(tau) = #exact with loss < tau + #not exact with loss >= tau
    below = x[None, :] < candidates[:, None]  # (C, N)
    correct = (below & y[None, :]).sum(1) + (~below & ~y[None, :]).sum(1)
    best = int(np.argmax(correct))  # first maximum: the smallest tau
    return float(candidates[best]), float(correct[best] / x.size)


def safe_threshold(loss: Sequence[float], exact: Sequence[bool]) -> float:
    """Lowest loss of a record that is not recalled (``inf`` when every record is recalled)."""
    x = np.asarray(loss, dtype=float)
    y = np.asarray(exact, dtype=bool)
    return float(x[~y].min()) if (~y).any() else math.inf


def binned_exact(
    loss: Sequence[float], exact: Sequence[bool], edges: Sequence[float]
) -> list[dict[str, float]]:
    """Exact-match rate per loss bin ``[edges[i], edges[i+1])``; empty bins are left out."""
    x = np.asarray(loss, dtype=float)
    y = np.asarray(exact, dtype=bool)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x >= lo) & (x < hi)
        if inside.any():
            rows.append(
                {"lo": float(lo), "hi": float(hi), "n": int(inside.sum()), "exact": float(y[inside].mean())}
            )
    return rows


def log_edges(loss: Sequence[float], bins: int = 20) -> np.ndarray:
    """Log-spaced bin edges covering the positive losses (plus one bin for tiny losses)."""
    x = np.asarray(loss, dtype=float)
    positive = x[x > 0]
    lo = max(float(positive.min()) if positive.size else 1e-4, 1e-4)
    hi = float(x.max()) if x.size else 1.0
    return np.concatenate([[0.0], np.geomspace(lo, max(hi, lo * 10) * 1.0001, bins)])
