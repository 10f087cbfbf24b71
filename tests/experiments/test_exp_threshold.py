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
