"""Paired percentile-bootstrap intervals over items, for comparing decoding heads on the same items.

Every head is scored on the same n items, so the heads' per-item scores are paired. One set of
resamples (``B`` rows of n item indices drawn with replacement) serves every head::

    idx          (B, n)   resample_indices(n, B, seed)
    mean_b(h)    = mean_i x_h[idx[b, i]]                       the head's mean on resample b
    interval(h)  = percentiles (2.5, 97.5) of mean_b(h) over b      (level 0.95)
    diff_b(h)    = mean_b(h) - mean_b(baseline)                 the SAME resample for both heads
    interval(h - baseline) = percentiles of diff_b(h)

The paired difference interval is narrower than what the two separate intervals suggest when the
heads agree on most items (their errors cancel item by item). "Excludes 0" = both ends on one side
of 0, strictly: the difference is significant at the interval's level. Percentiles use numpy's
default (linear) interpolation. Small n (a ``--limit`` run) gives wide, unreliable intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def resample_indices(n: int, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` item indices drawn with replacement (seeded numpy ``default_rng``)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 items and n_boot >= 1 resamples, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples ``(B,)``."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    scores: Mapping[str, Sequence[float]],
    baseline: str | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Mean and bootstrap interval of each head, and of its difference to ``baseline`` (paired).

    Args:
        scores: per-item scores of each head, all over the same items in the same order.
        baseline: the head that differences are taken against (None: no differences).
        n_boot: bootstrap resamples.
        seed: seed of the resamples (one set for every head).
        level: the interval's coverage.

    Returns:
        ``{head: {"mean", "low", "high", "n"[, "diff": {"mean", "low", "high", "excludes_zero"}]}}``;
        the baseline itself gets no ``diff``.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    sizes = {k: a.shape for k, a in arrays.items()}
    if len(set(sizes.values())) != 1 or any(len(s) != 1 for s in sizes.values()):
        raise ValueError(f"every head needs one score per item, over the same items; got shapes {sizes}")
    bad = [k for k, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"non-finite per-item scores for {bad}; drop those items first")
    if baseline is not None and baseline not in arrays:
        raise ValueError(f"baseline {baseline!r} is not among the heads {sorted(arrays)}")
    n = next(iter(sizes.values()))[0]
    idx = resample_indices(n, n_boot, seed)  # (B, n)
    boot = {k: a[idx].mean(1) for k, a in arrays.items()}  # (B,) per head
    out: dict[str, dict] = {}
    for k, a in arrays.items():
        low, high = interval(boot[k], level)
        out[k] = {"mean": float(a.mean()), "low": low, "high": high, "n": n}
        if baseline is not None and k != baseline:
            d = boot[k] - boot[baseline]  # (B,) paired: same resample for both heads
            dlow, dhigh = interval(d, level)
            out[k]["diff"] = {
                "mean": float((a - arrays[baseline]).mean()),
                "low": dlow,
                "high": dhigh,
                "excludes_zero": bool(dlow > 0 or dhigh < 0),
            }
    return out
