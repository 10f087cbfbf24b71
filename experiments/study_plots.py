"""Plot helpers shared by the studies: small multiples, seed bands, the shared method palette.

Every curve is the mean over seeds with its 95% t-interval as a shaded band
(:func:`experiments.seed_stats.band_over_seeds`); every point estimate carries an error bar. A method
has the same colour in every plot (:data:`experiments.seed_stats.METHOD_COLOURS`).
"""

from __future__ import annotations

import math
from typing import Any

from experiments.seed_stats import band_over_seeds

FAILED_MARKER = dict(marker="x", ms=9, mew=2, ls="none")  # a run that did not fit


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_band(
    ax: Any, series: list[list[dict[str, float]]], x: str, y: str, colour: str, label: str, log: bool = False
) -> None:
    """Mean of ``y`` over seeds against ``x`` as a line, its 95% interval as a band.

    With ``log`` (a log-scaled y axis) the band's lower edge is clipped at a tenth of the mean.
    """
    band = band_over_seeds(series, x, y)
    if not band:
        return
    xs = [b[0] for b in band]
    ax.plot(xs, [b[1] for b in band], color=colour, lw=1.5, label=label)
    lo = [b[2] if not math.isnan(b[2]) else b[1] for b in band]
    hi = [b[3] if not math.isnan(b[3]) else b[1] for b in band]
    if log:
        lo = [max(v, b[1] / 10) for v, b in zip(lo, band)]
    ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0)


def errorbar(ax: Any, xs: list[float], rows: list[dict[str, Any]], key: str, colour: str, label: str) -> None:
    """Means of ``key`` with their interval as error bars (rows from :func:`aggregate`)."""
    pts = [(x, r) for x, r in zip(xs, rows) if r.get(key) is not None]
    if not pts:
        return
    means = [r[key] for _, r in pts]
    lo = [r[key] - r[f"{key}_lo"] if r.get(f"{key}_lo") is not None else 0.0 for _, r in pts]
    hi = [r[f"{key}_hi"] - r[key] if r.get(f"{key}_hi") is not None else 0.0 for _, r in pts]
    xs = [x for x, _ in pts]
    ax.errorbar(xs, means, yerr=[lo, hi], fmt="o-", color=colour, capsize=3, ms=4, label=label)
