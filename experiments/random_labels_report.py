"""The random-label study's plots and claims, from its per-seed curves and seed-aggregated table.

Plots (small multiples, mean over seeds with 95% t-interval bands or error bars):

- ``<prefix>_curves.png``: one column per method; loss (top) and training exact match (bottom) against
  epochs, one series per corruption fraction p.
- ``<prefix>_summary.png``: steps to 100% training exact match against p (a cross marks a p where some
  seed did not fit, at the top of the panel) and held-out exact match against p, one colour per method.

Claim (per method): "memorising random labels leaves held-out answers mostly unchanged": the held-out
exact-match change (after - before) at the largest p lies within +- ``unchanged_margin``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from decoding.run_folder import atomic_savefig
from experiments.claims import Claim
from experiments.seed_stats import fmt_ci, intervals_separate, method_colour, verdict
from experiments.study_plots import FAILED_MARKER, errorbar, pyplot, seed_band

HELDOUT_CLAIM = "memorising random labels leaves held-out answers mostly unchanged"
LOSS_LABELS = {
    "nll": "evaluated answer NLL,\nmean over trained facts (nats/token)",
    "train_loss": "training loss,\nepoch mean (nats/example)",
}


def plot_study(
    rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    out: Path,
    prefix: str,
    loss_key: str,
    heldout: str = "held-out exact match (fraction, true answers)",
) -> list[Path]:
    """Write ``<prefix>_curves.png`` and ``<prefix>_summary.png``; return their paths.

    Args:
        rows: seed-aggregated table (:func:`experiments.seed_stats.aggregate` by p and method).
        curves: per-seed curve rows (p, method, seed, epoch, ``loss_key``, ``train/exact``).
        out: folder of the PNGs.
        prefix: file-name prefix.
        loss_key: the curves' loss column (``nll``: evaluated over all trained facts; ``train_loss``).
        heldout: the y label of the held-out panel (what held-out accuracy measures).
    """
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = sorted({r["p"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colour = {p: cmap(0.9 * i / max(1, len(fractions) - 1)) for i, p in enumerate(fractions)}
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 5.6), squeeze=False, sharex="col")
    for j, method in enumerate(methods):
        for p in fractions:
            mine = [c for c in curves if c["method"] == method and c["p"] == p and c["epoch"] > 0]
            series = [[c for c in mine if c["seed"] == s] for s in sorted({c["seed"] for c in mine})]
            seed_band(axes[0, j], series, "epoch", loss_key, colour[p], f"p={p:g}", log=True)
            seed_band(axes[1, j], series, "epoch", "train/exact", colour[p], f"p={p:g}")
        axes[0, j].set_title(method, color=method_colour(method), fontweight="bold")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel("epoch")
        axes[1, j].set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel(LOSS_LABELS[loss_key], fontsize=8)
    axes[1, 0].set_ylabel("training exact match (fraction of facts)", fontsize=8)
    axes[0, -1].legend(fontsize=7, title="corruption p", title_fontsize=7)
    fig.suptitle("mean over seeds, band: 95% t-interval", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    curves_png = out / f"{prefix}_curves.png"
    atomic_savefig(fig, curves_png, dpi=80)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    # the axis follows the means (a 2-seed interval can be 10x wider); longer error bars are clipped
    top = max([r["steps_to_100"] for r in rows if r["steps_to_100"] is not None] or [0])
    top = top * 1.4 if top else 1.0
    dodge = 0.02 * (max(fractions) - min(fractions) or 1.0)  # methods side by side, not on top
    for k, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["p"])
        c = method_colour(method)
        xs = [r["p"] + (k - (len(methods) - 1) / 2) * dodge for r in mine]
        errorbar(ax1, xs, mine, "steps_to_100", c, method)
        failed = [(x, r) for x, r in zip(xs, mine) if (r["fitted"] or 0.0) < 1.0]
        if failed:
            ax1.plot([x for x, _ in failed], [top] * len(failed), color=c, **FAILED_MARKER)
            for x, r in failed:
                missed = r["n_seeds"] * (1.0 - (r["fitted"] or 0.0))
                ax1.annotate(f"{round(missed)}/{r['n_seeds']}", (x, top), fontsize=7, color=c,
                             textcoords="offset points", xytext=(-6, -14 - 8 * k))  # fmt: skip
        errorbar(ax2, xs, mine, "heldout_after", c, f"{method} after")
    if rows[0].get("heldout_before") is not None:
        ax2.axhline(rows[0]["heldout_before"], color="k", ls="--", lw=1, label="before (base)")
    ax1.plot([], [], color="grey", **FAILED_MARKER, label="seeds not fit (count)")
    ax1.set_ylim(0, top * 1.08)
    ax1.set_xlabel("corruption fraction p")
    ax1.set_ylabel("optimiser steps to 100% training\nexact match (bars clipped at the top)", fontsize=8)
    ax2.set_xlabel("corruption fraction p")
    ax2.set_ylabel(heldout)
    ax2.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle("mean over seeds, error bars: 95% t-interval", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    summary_png = out / f"{prefix}_summary.png"
    atomic_savefig(fig, summary_png, dpi=80)
    plt.close(fig)
    return [curves_png, summary_png]


def heldout_claims(rows: list[dict[str, Any]], margin: float, measure: str = "exact-match") -> list[Claim]:
    """Per method, the verdict on :data:`HELDOUT_CLAIM` at the largest corruption fraction.

    The measured quantity is the held-out exact-match change (after - before) over seeds; the claim is
    supported when its interval lies within +- ``margin``, not supported when it lies entirely outside.
    The sentence on separation compares held-out exact match at the largest p with p = 0 (true answers).
    ``measure`` names the held-out quantity in the sentences (``exact-match``; ``accuracy`` for the
    known-facts task).
    """
    p_max = max(r["p"] for r in rows)
    claims = []
    for method in dict.fromkeys(r["method"] for r in rows):
        hi_row = next(r for r in rows if r["method"] == method and r["p"] == p_max)
        key = "heldout_change"
        mean, lo, hi = hi_row.get(key), hi_row.get(f"{key}_lo"), hi_row.get(f"{key}_hi")
        result = verdict(lo, hi, lambda v: abs(v) <= margin)
        after = fmt_ci(hi_row["heldout_after"], hi_row["heldout_after_lo"], hi_row["heldout_after_hi"])
        measured = (
            f"held-out {measure} change at p = {p_max:g}: {fmt_ci(mean, lo, hi)} over {hi_row['n_seeds']} "
            f"seeds (after {after}, before {_num(hi_row['heldout_before'])})"
        )
        base = next((r for r in rows if r["method"] == method and r["p"] == 0.0), None)
        if base is None or p_max == 0.0:
            separation = "No p = 0 (true-answer) cell to compare with."
        else:
            a = (hi_row["heldout_after_lo"], hi_row["heldout_after_hi"])
            b = (base["heldout_after_lo"], base["heldout_after_hi"])
            word = "separate" if intervals_separate(a, b) else "overlap"
            separation = (
                f"Its held-out interval and the true-answer (p = 0) one "
                f"{fmt_ci(base['heldout_after'], *b)} {word}."
            )
        boundary = f"|change| <= {margin:g} ({measure} fraction of the held-out facts)"
        claims.append(Claim(HELDOUT_CLAIM, method, measured, boundary, result, separation))
    return claims


def _num(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
