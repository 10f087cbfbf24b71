"""Metric formulas against a hand-computed 3x3 accuracy matrix (rows = task i, columns = after task t)."""

from __future__ import annotations

import math

import pytest
import torch

from prompt_pool.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_accuracy,
    summarise,
)

# A[i, t]; entries below the diagonal... i.e. i > t, are evaluations of tasks not trained yet.
A = torch.tensor([[90.0, 95.0, 70.0], [10.0, 60.0, 85.0], [20.0, 15.0, 95.0]])
B = torch.tensor([10.0, 5.0, 12.0])  # untrained-model accuracy per task


def test_average_accuracy_final_and_intermediate():
    assert average_accuracy(A) == pytest.approx((70 + 85 + 95) / 3)
    assert average_accuracy(A, t=1) == pytest.approx((95 + 60) / 2)
    assert average_accuracy(A, t=0) == pytest.approx(90)


def test_forgetting_under_the_three_conventions():
    # max (L2P code; max over i <= t' <= t): task0 max(90,95,70)-70 = 25; task1 max(60,85)-85 = 0
    assert forgetting(A, kind="max") == pytest.approx(12.5)
    # Chaudhry (max over t' <= t-1): task0 95-70 = 25; task1 60-85 = -25
    assert forgetting(A, kind="chaudhry") == pytest.approx(0.0)
    # first value (Avalanche): task0 90-70 = 20; task1 60-85 = -25
    assert forgetting(A, kind="first") == pytest.approx(-2.5)
    assert forgetting(A, t=1, kind="max") == pytest.approx(0.0)  # 95 is the max so far
    assert forgetting(A, t=1, kind="first") == pytest.approx(-5.0)
    assert math.isnan(forgetting(A, t=0))


def test_backward_and_forward_transfer_and_learning_accuracy():
    assert backward_transfer(A) == pytest.approx(((70 - 90) + (85 - 60)) / 2)
    assert forward_transfer(A, B) == pytest.approx(((10 - 5) + (15 - 12)) / 2)
    assert math.isnan(forward_transfer(A, None))
    assert learning_accuracy(A) == pytest.approx((90 + 60 + 95) / 3)


def test_average_incremental_accuracy_pools_samples():
    totals = torch.tensor([20, 20, 40])
    correct = torch.tensor([[18, 19, 14], [0, 12, 17], [0, 0, 38]])
    # a_0 = 18/20, a_1 = 31/40, a_2 = 69/80
    expect = 100 * (18 / 20 + 31 / 40 + 69 / 80) / 3
    assert average_incremental_accuracy(correct, totals) == pytest.approx(expect)


def test_summarise_and_transposed_conventions_differ():
    s = summarise(A, B)
    assert s["forgetting"] == pytest.approx(12.5) and s["backward_transfer"] == pytest.approx(2.5)
    # Mammoth/Avalanche store rows = time; feeding that layout unchanged would give other numbers
    assert average_accuracy(A.T) != pytest.approx(s["average_accuracy"])


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        average_accuracy(torch.zeros(2, 3))
