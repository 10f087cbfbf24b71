"""Loss thresholds: the decision stump against a brute-force oracle, the safe threshold, binned curves."""

from __future__ import annotations

import math
import random

import pytest

from experiments.threshold import binned_exact, log_edges, safe_threshold, separating_threshold


def brute_force_stump(loss, exact):
    """Try every tau in a fine grid + all data points; return the best accuracy."""
    best = 0
    for tau in sorted(set(loss)) + [max(loss) + 1]:
        correct = sum((x < tau) == e for x, e in zip(loss, exact))
        best = max(best, correct)
    return best / len(loss)


def test_stump_on_a_hand_made_example():
    loss = [0.1, 0.2, 0.5, 0.9, 1.5, 3.0]
    exact = [True, True, True, False, True, False]
    tau, acc = separating_threshold(loss, exact)
    assert tau == pytest.approx(0.7)  # between 0.5 and 0.9: 5 of 6 right (the 1.5 record is wrong)
    assert acc == pytest.approx(5 / 6)
    assert safe_threshold(loss, exact) == 0.9


@pytest.mark.parametrize("seed", range(5))
def test_stump_accuracy_equals_brute_force(seed):
    rng = random.Random(seed)
    loss = [rng.expovariate(1.0) for _ in range(60)]
    exact = [rng.random() < math.exp(-2 * x) for x in loss]
    tau, acc = separating_threshold(loss, exact)
    assert acc == pytest.approx(brute_force_stump(loss, exact))
    assert acc == pytest.approx(sum((x < tau) == e for x, e in zip(loss, exact)) / len(loss))


def test_all_recalled_gives_infinite_safe_threshold_and_a_tau_above_every_loss():
    tau, acc = separating_threshold([0.3, 0.1], [True, True])
    assert acc == 1.0 and tau > 0.3
    assert safe_threshold([0.3, 0.1], [True, True]) == math.inf


def test_binned_exact_counts_by_hand():
    rows = binned_exact([0.05, 0.2, 0.3, 2.0, 5.0], [True, True, False, False, False], [0, 0.1, 1, 10])
    assert rows == [
        {"lo": 0, "hi": 0.1, "n": 1, "exact": 1.0},
        {"lo": 0.1, "hi": 1, "n": 2, "exact": 0.5},
        {"lo": 1, "hi": 10, "n": 2, "exact": 0.0},
    ]
    edges = log_edges([0.0, 0.01, 7.0])
    assert edges[0] == 0 and edges[-1] > 7.0 and all(a < b for a, b in zip(edges, edges[1:]))


def test_head_thresholds_put_every_head_on_the_greedy_nll_axis():
    from experiments.hallucination_vs_loss import head_thresholds

    records = [  # two evaluations of two facts; the head recalls one fact at a higher loss than greedy
        {"epoch": 1, "nll_sum": 5.0, "nll": 1.0, "exact": 0, "exact/sled": 0},
        {"epoch": 1, "nll_sum": 3.0, "nll": 0.6, "exact": 0, "exact/sled": 1},
        {"epoch": 2, "nll_sum": 1.0, "nll": 0.2, "exact": 1, "exact/sled": 1},
        {"epoch": 2, "nll_sum": 0.5, "nll": 0.1, "exact": 1, "exact/sled": 1},
    ]
    rows = {r["head"]: r for r in head_thresholds("full", records, entropy=20.0)}
    assert rows["greedy"]["threshold_nll_sum"] == pytest.approx(2.0)  # between 1.0 and 3.0
    assert rows["sled"]["threshold_nll_sum"] == pytest.approx(4.0)  # between 3.0 and 5.0: a higher loss
    assert rows["greedy"]["safe_nll_sum"] == 3.0 and rows["sled"]["safe_nll_sum"] == 5.0
    assert rows["greedy"]["exact_below_ln2"] == 1.0  # the 0.5-nat record
    assert rows["greedy"]["final_hallucination"] == 0.0 and rows["sled"]["stump_accuracy"] == 1.0


def test_no_recalled_record_gives_no_threshold_and_the_nll_axis_covers_all_facts():
    from experiments.hallucination_vs_loss import head_thresholds, nll_curve

    records = [
        {"epoch": 1, "nll_sum": 5.0, "nll": 1.0, "exact": 0},
        {"epoch": 1, "nll_sum": 3.0, "nll": 0.6, "exact": 0},
    ]
    (row,) = head_thresholds("mome", records, entropy=20.0)
    assert row["threshold_nll_sum"] is None and row["safe_nll_sum"] == 3.0
    curve = nll_curve([{"epoch": 1, "step": 4, "train_loss": 9.0}], records)
    assert curve[0]["nll"] == pytest.approx(0.8)  # mean over every fact, not the training batch loss
