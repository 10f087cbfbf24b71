"""The hallucination-vs-loss experiment's plot and claims, from per-seed curves and aggregated thresholds.

Plot (``hallucination_vs_loss.png``, small multiples): one panel per decoding head (greedy first) with
the hallucination rate against the evaluated answer NLL (nats/token, mean over all trained facts), one
colour per method, mean over seeds per evaluation with the 95% t-interval of the rate as a band; a last
panel with exact recall binned by a fact's summed answer NLL (one thin line per seed), ln 2, the
answer entropy and each method's greedy threshold with its interval (shaded).

Claim (per method and head): "exact recall starts when the per-fact answer loss falls below ~ln 2",
tested as: the separating threshold on the summed answer NLL lies within [ln 2 / band, ln 2 * band].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from decoding.run_folder import atomic_savefig
from experiments.claims import Claim
from experiments.seed_stats import band_over_seeds, fmt_ci, intervals_separate, method_colour, verdict
from experiments.study_plots import pyplot
from experiments.threshold import LN2

THRESHOLD_CLAIM = (
    "exact recall starts when the per-fact answer loss falls below ~ln 2 (not near the answer entropy)"
)
NLL_LABEL = "evaluated answer NLL, mean over all trained facts (nats/token)"


def _head_key(head: str) -> str:
    return "train/exact" if head == "greedy" else f"train/exact/{head}"


def plot_experiment(
    curves: list[dict[str, Any]], binned: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path
) -> Path:
    """Write ``hallucination_vs_loss.png`` into ``out`` and return its path.

    Args:
        curves: per-seed curve rows (method, seed, epoch, ``nll``, ``train/exact[/head]``).
        binned: per-seed binned exact recall rows (method, seed, lo, hi, exact).
        rows: thresholds aggregated over seeds per (method, head).
    """
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    ncols = 4
    nrows = math.ceil((len(heads) + 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, head in zip(flat, heads):
        key = _head_key(head)
        for method in methods:
            mine = [c for c in curves if c["method"] == method and c["epoch"] > 0]
            series = [
                [{"epoch": c["epoch"], "nll": c["nll"], "h": 1.0 - c[key]} for c in mine if c["seed"] == s]
                for s in sorted({c["seed"] for c in mine})
            ]
            x = band_over_seeds(series, "epoch", "nll")
            y = band_over_seeds(series, "epoch", "h")
            if not x:
                continue
            xs, ys = [b[1] for b in x], [b[1] for b in y]
            lo = [b[2] if not math.isnan(b[2]) else b[1] for b in y]
            hi = [b[3] if not math.isnan(b[3]) else b[1] for b in y]
            c = method_colour(method)
            ax.plot(xs, ys, "o-", ms=2, lw=1.2, color=c, label=method)
            ax.fill_between(xs, lo, hi, color=c, alpha=0.2, lw=0)
        ax.set_title(head, fontsize=9)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_ylim(-0.02, 1.02)
    for ax in axes[:, 0]:
        ax.set_ylabel("hallucination rate\n(fraction of trained facts)", fontsize=8)
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    for ax in flat[: len(heads)]:  # plain labels at 1, 2, 5 x 10^k: readable over any range
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.tick_params(axis="x", labelsize=7)
    fig.supxlabel(f"x (head panels): {NLL_LABEL}, decreasing →", fontsize=8)
    flat[0].legend(fontsize=7)

    ax = flat[len(heads)]
    entropy = rows[0]["entropy_nats"]
    for method in methods:
        c = method_colour(method)
        for seed in sorted({b["seed"] for b in binned if b["method"] == method}):
            pts = [b for b in binned if b["method"] == method and b["seed"] == seed]
            ax.step(
                [b["hi"] for b in pts], [b["exact"] for b in pts], where="pre", color=c, lw=0.7, alpha=0.6
            )
        row = next(r for r in rows if r["method"] == method and r["head"] == "greedy")
        tau, lo, hi = row["threshold_nll_sum"], row["threshold_nll_sum_lo"], row["threshold_nll_sum_hi"]
        if tau is not None:
            ax.axvline(tau, color=c, ls="--", lw=1, label=f"{method} threshold {tau:.2f}")
            if lo is not None and hi is not None:
                ax.axvspan(max(lo, 1e-4), hi, color=c, alpha=0.15, lw=0)
    ax.axvline(LN2, color="k", ls=":", label="ln 2 (sufficient)")
    ax.axvline(entropy, color="grey", ls="-.", label=f"answer entropy {entropy:.1f}")
    ax.set_xscale("log")
    ax.set_xlabel("summed answer NLL of a fact (nats, greedy model)", fontsize=7)
    ax.set_ylabel("exact recall (greedy, fraction)", fontsize=8)
    ax.set_title("recall by loss; threshold ± 95% CI", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=5.5)
    for extra in flat[len(heads) + 1 :]:
        extra.axis("off")
    fig.suptitle("mean over seeds per evaluation, band: 95% t-interval", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / "hallucination_vs_loss.png"
    atomic_savefig(fig, path, dpi=80)
    plt.close(fig)
    return path


def threshold_claims(rows: list[dict[str, Any]], entropy: float, band: float) -> list[Claim]:
    """Per (method, head), the verdict on :data:`THRESHOLD_CLAIM`.

    Supported when the threshold's interval (summed answer NLL, nats) lies within
    [ln 2 / band, ln 2 * band]; not supported when it lies entirely outside; the separation sentence
    compares a head's interval with the greedy one of the same method.
    """
    low, high = LN2 / band, LN2 * band
    boundary = (
        f"threshold on the summed answer NLL within [{low:.3f}, {high:.3f}] nats "
        f"(ln 2 / {band:g}, ln 2 × {band:g})"
    )
    claims = []
    for row in rows:
        mean, lo, hi = row["threshold_nll_sum"], row["threshold_nll_sum_lo"], row["threshold_nll_sum_hi"]
        result = verdict(lo, hi, lambda v: low <= v <= high)
        frac = f"{mean / entropy:.3f}" if mean is not None else "–"
        key = "final_hallucination"
        halluc = fmt_ci(row[key], row[f"{key}_lo"], row[f"{key}_hi"])
        measured = (
            f"threshold {fmt_ci(mean, lo, hi)} nats over {row['n_seeds']} seeds (= {frac} of the answer "
            f"entropy {entropy:.1f}); final hallucination {halluc}"
        )
        if row["head"] == "greedy":
            separation = "Greedy is the reference head."
        else:
            greedy = next(r for r in rows if r["method"] == row["method"] and r["head"] == "greedy")
            a, b = (lo, hi), (greedy["threshold_nll_sum_lo"], greedy["threshold_nll_sum_hi"])
            word = "separates from" if intervals_separate(a, b) else "overlaps"
            separation = f"Its interval {word} greedy's {fmt_ci(greedy['threshold_nll_sum'], *b)}."
        claims.append(
            Claim(THRESHOLD_CLAIM, f"{row['method']} / {row['head']}", measured, boundary, result, separation)
        )
    return claims
