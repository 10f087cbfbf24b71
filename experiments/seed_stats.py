"""Statistics over seeds: mean and 95% t-interval, per-cell aggregation, and the verdict rule.

Every study runs each (method, p) cell with several seeds. A table entry is the mean over seeds with
the 95% Student-t interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (sd with ``ddof=1``); with one seed
the interval is undefined (``nan``). A claim compares an interval with a decision boundary
(:func:`verdict`): entirely on the claim's side -> supported, entirely on the other side -> not
supported, overlapping the boundary -> inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from scipy import stats as _stats

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

# one colour per method in every plot of every study (matplotlib's tab10 colours)
METHOD_COLOURS = {"full": "#1f77b4", "lora": "#ff7f0e", "mome": "#2ca02c", "mome_gate": "#9467bd"}


def method_colour(method: str) -> str:
    """The method's colour in every plot (grey for a method not in :data:`METHOD_COLOURS`)."""
    return METHOD_COLOURS.get(method, "#7f7f7f")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of ``values`` and its two-sided Student-t interval.

    ``None`` and ``nan`` values are left out; no values give ``(nan, nan, nan)``, one value
    ``(value, nan, nan)``, identical values a zero-width interval.
    """
    x = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not x:
        return math.nan, math.nan, math.nan
    n = len(x)
    mean = sum(x) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def aggregate(rows: list[dict[str, Any]], by: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct ``by`` values (first-seen order): ``n_seeds``, and for every key its
    mean (``key``), interval (``key_lo``, ``key_hi``) and number of seeds with a value (``key_n``)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[b] for b in by), []).append(row)
    out = []
    for group_key, members in groups.items():
        agg: dict[str, Any] = dict(zip(by, group_key))
        agg["n_seeds"] = len(members)
        for key in keys:
            values = [m.get(key) for m in members]
            mean, lo, hi = t_interval(values)
            agg[key], agg[f"{key}_lo"], agg[f"{key}_hi"] = _none(mean), _none(lo), _none(hi)
            agg[f"{key}_n"] = sum(v is not None and not math.isnan(float(v)) for v in values)
        out.append(agg)
    return out


def _none(v: float) -> float | None:
    return None if math.isnan(v) else v


def verdict(lo: float | None, hi: float | None, supports: Callable[[float], bool]) -> str:
    """Verdict of a claim from its interval [lo, hi] and the side of the boundary that supports it.

    Args:
        lo: lower end of the 95% interval (None or nan: undefined -> inconclusive).
        hi: upper end.
        supports: True for values on the claim's side of the boundary (a convex region: an interval
            lies inside it iff both ends do).
    """
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    if supports(lo) and supports(hi):
        return SUPPORTED
    if not supports(lo) and not supports(hi) and not _straddles(lo, hi, supports):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def _straddles(lo: float, hi: float, supports: Callable[[float], bool]) -> bool:
    """Whether the supporting region lies between lo and hi (checked on a fine grid)."""
    return any(supports(lo + (hi - lo) * i / 256) for i in range(257))


def intervals_separate(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    """Whether two intervals (lo, hi) are disjoint (undefined ends: not separated)."""
    if None in (*a, *b) or any(math.isnan(v) for v in (*a, *b)):  # type: ignore[arg-type]
        return False
    return a[1] < b[0] or b[1] < a[0]  # type: ignore[operator]


def fmt_ci(mean: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
    """``mean [lo, hi]`` (an en dash for a missing value; ``[n/a]`` for an undefined interval)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or hi is None:
        return f"{mean:.{digits}f} [n/a]"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def ci_columns(rows: list[dict[str, Any]], keys: Sequence[str], digits: int = 3) -> list[dict[str, Any]]:
    """Rows with every key of ``keys`` rendered as ``mean [lo, hi]`` (for markdown tables)."""
    return [
        {**r, **{k: fmt_ci(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"), digits) for k in keys}} for r in rows
    ]


def band_over_seeds(
    series: list[list[dict[str, float]]], x: str, y: str
) -> list[tuple[float, float, float, float]]:
    """Per value of ``x`` (epoch), the mean and t-interval of ``y`` over seeds: (x, mean, lo, hi).

    A seed whose run stopped earlier (every fact recalled) keeps its last value for later x: the
    stopped run stays where it ended.
    """
    xs = sorted({row[x] for s in series for row in s})
    out = []
    for xv in xs:
        values = []
        for s in series:
            upto = [row for row in s if row[x] <= xv]
            if upto:
                values.append(upto[-1][y])
        mean, lo, hi = t_interval(values)
        out.append((xv, mean, lo, hi))
    return out
