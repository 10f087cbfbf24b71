"""Statistics over seeds: t-intervals, aggregation, the verdict rule and the studies' summary.md."""

from __future__ import annotations

import math

import pytest

from decoding.errors import UserError
from experiments.checks import check_seeds
from experiments.claims import Claim, summary_markdown, write_summary
from experiments.hallucination_report import THRESHOLD_CLAIM, threshold_claims
from experiments.random_labels_report import HELDOUT_CLAIM, heldout_claims
from experiments.seed_stats import (
    INCONCLUSIVE,
    METHOD_COLOURS,
    NOT_SUPPORTED,
    SUPPORTED,
    aggregate,
    band_over_seeds,
    fmt_ci,
    intervals_separate,
    t_interval,
    verdict,
)
from experiments.threshold import LN2


def test_t_interval_matches_the_textbook_value():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t_{0.975, 2} = 4.3027
    assert mean == pytest.approx(2.0)
    assert hi - mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert mean - lo == pytest.approx(hi - mean)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread: zero width


def test_t_interval_leaves_out_missing_values_and_is_undefined_for_one_seed():
    assert t_interval([2.0, None, float("nan"), 4.0])[0] == pytest.approx(3.0)
    mean, lo, hi = t_interval([7.0])
    assert mean == 7.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in t_interval([None]))


def test_t_interval_covers_the_mean_about_95_percent_of_the_time():
    import random

    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        _, lo, hi = t_interval([rng.gauss(1.0, 2.0) for _ in range(3)])
        covered += lo <= 1.0 <= hi
    assert 0.92 < covered / trials < 0.98


def test_aggregate_groups_by_cell_and_counts_seeds_with_a_value():
    rows = [
        {"p": 0.0, "method": "full", "seed": s, "x": float(s), "steps": None if s == 2 else 10.0 * (s + 1)}
        for s in range(3)
    ] + [{"p": 1.0, "method": "full", "seed": 0, "x": 5.0, "steps": None}]
    out = aggregate(rows, ["p", "method"], ["x", "steps"])
    assert [(r["p"], r["n_seeds"]) for r in out] == [(0.0, 3), (1.0, 1)]
    assert out[0]["x"] == pytest.approx(1.0) and out[0]["x_lo"] < 1.0 < out[0]["x_hi"]
    assert out[0]["steps"] == pytest.approx(15.0) and out[0]["steps_n"] == 2
    assert out[1]["steps"] is None and out[1]["x_lo"] is None  # one seed: no interval


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (-0.02, 0.03, SUPPORTED),  # inside the band
        (0.10, 0.30, NOT_SUPPORTED),  # entirely above it
        (-0.40, -0.10, NOT_SUPPORTED),  # entirely below it
        (0.01, 0.20, INCONCLUSIVE),  # overlaps the upper boundary
        (-0.30, 0.30, INCONCLUSIVE),  # straddles the whole band
        (None, None, INCONCLUSIVE),  # one seed: no interval
    ],
)
def test_verdict_rule_on_a_two_sided_band(lo, hi, expected):
    assert verdict(lo, hi, lambda v: abs(v) <= 0.05) == expected


def test_intervals_separate_and_fmt_ci():
    assert intervals_separate((0.0, 1.0), (1.5, 2.0))
    assert not intervals_separate((0.0, 1.6), (1.5, 2.0))
    assert not intervals_separate((0.0, None), (1.5, 2.0))
    assert fmt_ci(0.5, 0.25, 0.75, 2) == "0.50 [0.25, 0.75]"
    assert fmt_ci(0.5, None, None, 2) == "0.50 [n/a]" and fmt_ci(None, None, None) == "–"


def test_band_over_seeds_keeps_a_stopped_seed_at_its_last_value():
    a = [{"epoch": 1, "y": 0.0}, {"epoch": 2, "y": 1.0}]  # stopped (fit) after epoch 2
    b = [{"epoch": 1, "y": 0.0}, {"epoch": 2, "y": 0.5}, {"epoch": 3, "y": 1.0}]
    band = band_over_seeds([a, b], "epoch", "y")
    assert [x for x, *_ in band] == [1, 2, 3]
    assert band[2][1] == pytest.approx(1.0)  # a counts as 1.0 at epoch 3


def _rl_row(method, p, change, half, after=0.5):
    return {
        "p": p, "method": method, "n_seeds": 3, "heldout_before": 0.5,
        "heldout_change": change, "heldout_change_lo": change - half, "heldout_change_hi": change + half,
        "heldout_after": after, "heldout_after_lo": after - half, "heldout_after_hi": after + half,
    }  # fmt: skip


def test_heldout_claims_on_a_hand_made_table():
    rows = [
        _rl_row("full", 0.0, 0.0, 0.01),
        _rl_row("full", 1.0, -0.30, 0.05, after=0.2),  # separated, outside the margin
        _rl_row("lora", 0.0, 0.0, 0.01),
        _rl_row("lora", 1.0, 0.01, 0.02),  # inside the margin
        _rl_row("mome", 0.0, 0.0, 0.01),
        _rl_row("mome", 1.0, -0.04, 0.05, after=0.46),  # overlaps -0.05
    ]
    claims = {c.subject: c for c in heldout_claims(rows, margin=0.05)}
    assert {s: c.verdict for s, c in claims.items()} == {
        "full": NOT_SUPPORTED,
        "lora": SUPPORTED,
        "mome": INCONCLUSIVE,
    }
    assert "separate" in claims["full"].separation and "overlap" in claims["lora"].separation
    assert "-0.300 [-0.350, -0.250]" in claims["full"].measured


def test_threshold_claims_on_a_hand_made_table():
    def row(method, head, tau, half):
        return {
            "method": method, "head": head, "n_seeds": 3, "threshold_nll_sum": tau,
            "threshold_nll_sum_lo": None if tau is None else tau - half,
            "threshold_nll_sum_hi": None if tau is None else tau + half,
            "final_hallucination": 0.1, "final_hallucination_lo": 0.0, "final_hallucination_hi": 0.2,
        }  # fmt: skip

    rows = [
        row("full", "greedy", 1.0, 0.2),  # inside [ln2/4, 4 ln2]
        row("full", "sled", 10.0, 1.0),  # far above
        row("full", "dola", 2.7, 0.3),  # overlaps 4 ln2 = 2.77
        row("full", "dera", 1.1, 0.2),  # inside, overlapping greedy
        row("lora", "greedy", None, 0.0),  # nothing recalled: no threshold
    ]
    claims = threshold_claims(rows, entropy=20.0, band=4.0)
    assert [c.verdict for c in claims] == [SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, SUPPORTED, INCONCLUSIVE]
    assert "separates from greedy" in claims[1].separation and "overlaps" in claims[3].separation
    assert f"{LN2 / 4:.3f}" in claims[0].boundary


def test_summary_states_claims_numbers_and_verdicts(tmp_path):
    claims = [
        Claim(
            HELDOUT_CLAIM, "full", "change 0.010 [0.000, 0.020]", "|change| <= 0.05", SUPPORTED, "Overlap."
        ),
        Claim(
            HELDOUT_CLAIM, "lora", "change -0.200 [-0.300, -0.100]", "|change| <= 0.05", NOT_SUPPORTED, "."
        ),
        Claim(THRESHOLD_CLAIM, "full / greedy", "threshold 1.0 [0.5, 1.5]", "band", INCONCLUSIVE, "Ref."),
    ]
    path = write_summary(tmp_path, "Study: summary", ["Intervals: 95% Student-t over seeds."], claims)
    text = path.read_text()
    assert text == summary_markdown("Study: summary", ["Intervals: 95% Student-t over seeds."], claims)
    assert f"## Claim: {HELDOUT_CLAIM}" in text and f"## Claim: {THRESHOLD_CLAIM}" in text
    assert "- **full: supported.** change 0.010 [0.000, 0.020]" in text
    assert "- **lora: not supported.**" in text and "- **full / greedy: inconclusive.**" in text
    assert "Decision boundary: |change| <= 0.05" in text
    assert "Verdicts: 1 supported, 1 not supported, 1 inconclusive." in text


def test_one_palette_for_every_method_and_seed_list_checks():
    assert set(METHOD_COLOURS) >= {"full", "lora", "mome"} and len(set(METHOD_COLOURS.values())) == len(
        METHOD_COLOURS
    )
    check_seeds([0, 1, 2])
    for bad in ([], [0, 0], [-1], "0,1", [0.5]):
        with pytest.raises(UserError, match="seeds=.*e.g. \\[0, 1, 2\\]"):
            check_seeds(bad)
