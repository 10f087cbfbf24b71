"""Selection rules: normalisation, top-N and vote tie rules, task mask ids, the eq. 4 diversity rule."""

from __future__ import annotations

import itertools

import pytest
import torch

from prompt_pool.selection import (
    batch_vote,
    cosine_similarity,
    diversity_top_n,
    l2_normalize,
    stable_top_n,
    task_prompt_ids,
)


def test_l2_normalize_zero_vector_gives_zero_not_nan():
    v = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    n = l2_normalize(v)
    assert not torch.isnan(n).any()
    assert torch.equal(n[0], torch.zeros(3))
    assert torch.allclose(n[1], torch.tensor([0.6, 0.8, 0.0]))


def test_cosine_similarity_matches_torch():
    q, k = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), torch.randn(5, 6)
    ref = torch.nn.functional.cosine_similarity(q[:, None], k[None], dim=-1)
    assert torch.allclose(cosine_similarity(q, k), ref, atol=1e-6)


def test_top_n_ties_go_to_lower_index():
    s = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert stable_top_n(s, 2).tolist() == [[1, 2], [0, 1]]
    assert stable_top_n(s, 3).tolist() == [[1, 2, 4], [0, 1, 2]]


def test_batch_vote_majority_with_lower_id_tie_and_same_ids_in_every_row():
    idx = torch.tensor([[3, 1], [3, 4], [1, 4], [0, 2]])  # counts: 3->2, 1->2, 4->2, 0->1, 2->1
    out = batch_vote(idx, pool_size=6, n=2)
    assert out.tolist() == [[1, 3]] * 4  # three-way tie at count 2 between 1, 3, 4: the lower ids win
    idx = torch.tensor([[5, 2], [5, 0], [5, 2]])  # 5->3, 2->2, 0->1
    assert batch_vote(idx, 6, 2).tolist() == [[5, 2]] * 3  # ordered by count


def test_task_prompt_ids_and_off_when_pool_too_small():
    assert task_prompt_ids(0, 4, 20).tolist() == [0, 1, 2, 3]
    assert task_prompt_ids(4, 4, 20).tolist() == [16, 17, 18, 19]
    assert task_prompt_ids(5, 4, 20) is None  # (t+1)N = 24 > M: mask off, as in the official code
    assert task_prompt_ids(1, 5, 10).tolist() == [5, 6, 7, 8, 9]


def _brute_force_eq4(sim: torch.Tensor, counts: torch.Tensor, n: int, smoothing: bool) -> list[list[int]]:
    """Literal eq. 4: argmin over N-subsets of sum (1-S)h; ties: larger summed S, then lexicographic ids."""
    h = counts.double() / counts.sum()
    if smoothing:
        h = h + 1.0 / len(counts)
    out = []
    for row in sim.double():
        best = min(
            itertools.combinations(range(len(row)), n),
            key=lambda s: (
                round(float(sum((1 - row[j]) * h[j] for j in s)), 12),
                -round(float(sum(row[j] for j in s)), 12),
                s,
            ),
        )
        out.append(sorted(best))
    return out


@pytest.mark.parametrize("smoothing", [False, True])
def test_diversity_matches_brute_force_subset_search(smoothing):
    g = torch.Generator().manual_seed(1)
    sim = torch.rand(6, 7, generator=g) * 2 - 1
    counts = torch.tensor([5, 0, 3, 0, 9, 1, 0])
    got = diversity_top_n(sim, counts, 3, smoothing)
    assert [sorted(r) for r in got.tolist()] == _brute_force_eq4(sim, counts, 3, smoothing)


def test_diversity_prefers_unused_prompts_ordered_by_similarity_then_id():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.1, 0.7]])
    counts = torch.tensor([10, 10, 0, 0, 0])  # prompts 2, 3, 4 never used: score 0
    assert diversity_top_n(sim, counts, 2).tolist() == [[4, 2]]  # 4 (S=.7) then the tie 2/3 -> lower id


def test_diversity_first_task_is_plain_top_n():
    sim = torch.tensor([[0.2, 0.9, 0.5]])
    assert diversity_top_n(sim, torch.zeros(3, dtype=torch.long), 2).tolist() == [[1, 2]]
