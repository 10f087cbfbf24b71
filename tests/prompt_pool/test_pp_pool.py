"""Prompt pool: gather order, pull constraint value and gradient, masks, diversity counts, inits, errors."""

from __future__ import annotations

import pytest
import torch

from prompt_pool.pool import PoolConfig, PromptPool


def _pool(**kw) -> PromptPool:
    args = dict(pool_size=6, prompt_length=3, top_n=2)
    args.update(kw)
    return PromptPool(PoolConfig(**args), embed_dim=4, seed=0)


def test_gather_shape_and_order_follow_the_selected_ids():
    pool = _pool()
    with torch.no_grad():
        pool.keys.copy_(torch.eye(6, 4))  # key j points along axis j (keys 4, 5 are zero)
    q = torch.tensor([[0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.2]])
    sel = pool.eval()(q)
    assert sel.ids.tolist() == [[1, 2], [0, 3]]
    assert sel.prompts.shape == (2, 2 * 3, 4)
    assert torch.equal(sel.prompts[0], torch.cat([pool.prompts[1], pool.prompts[2]]))
    assert torch.equal(sel.prompts[1], torch.cat([pool.prompts[0], pool.prompts[3]]))


def test_pull_equals_batch_mean_of_summed_cosines_and_only_selected_keys_get_gradient():
    pool = _pool().train()
    q = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    sel = pool(q)
    cos = torch.nn.functional.cosine_similarity(q[:, None, :], pool.keys[sel.ids], dim=-1)  # (B, N)
    assert sel.pull.item() == pytest.approx(cos.sum(1).mean().item(), abs=1e-6)
    (-sel.pull).backward()
    touched = pool.keys.grad.abs().sum(1) > 0
    assert touched.tolist() == [j in set(sel.ids.flatten().tolist()) for j in range(6)]
    assert pool.prompts.grad is None  # prompts get gradient only through the backbone


def test_vote_gives_every_sample_the_same_ids_in_train_and_eval():
    pool = _pool(batchwise_vote=True)
    q = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    for mode in (True, False):
        ids = pool.train(mode)(q).ids
        assert (ids == ids[0]).all()


def test_prompt_mask_in_training_only_and_off_when_pool_too_small():
    pool = _pool(use_prompt_mask=True)
    q = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    pool.begin_task(1)
    assert pool.train()(q).ids.tolist() == [[2, 3]] * 3
    free = pool.eval()(q).ids
    assert (
        free.tolist()
        == torch.sort(pool.eval()(q).sim, dim=1, descending=True, stable=True).indices[:, :2].tolist()
    )
    pool.begin_task(3)  # (3+1)*2 = 8 > 6: no mask
    assert pool.train()(q).ids.tolist() == free.tolist()


def test_shared_prompt_pool_copies_previous_slice_at_task_start():
    pool = _pool(use_prompt_mask=True, shared_prompt_pool=True, shared_prompt_key=True)
    pool.begin_task(1)
    assert torch.equal(pool.prompts[2:4], pool.prompts[0:2]) and torch.equal(pool.keys[2:4], pool.keys[0:2])
    assert not torch.equal(pool.prompts[4:6], pool.prompts[0:2])


def test_counts_feed_the_diversity_rule_of_the_next_task():
    pool = _pool(diversity=True, pull_on_diversity_ids=True)
    q = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    pool.train()
    first = pool(q).ids  # task 0: eq. 3
    assert pool.task_counts.sum() == 8 and pool.prev_counts.sum() == 0
    pool.begin_task(1)
    assert torch.equal(pool.prev_counts, torch.bincount(first.flatten(), minlength=6))
    second = pool(q).ids
    used = set(first.flatten().tolist())
    unused = [j for j in range(6) if j not in used]
    if len(unused) >= 2:  # never-used prompts score 0 and win
        assert set(second.flatten().tolist()) <= set(unused)
    assert torch.equal(
        pool.eval()(q).ids, torch.sort(pool(q).sim, dim=1, descending=True, stable=True).indices[:, :2]
    )


@pytest.mark.parametrize("init,low,high", [("uniform_small", 0.0, 0.01), ("uniform", -1.0, 1.0)])
def test_init_ranges(init, low, high):
    pool = PromptPool(PoolConfig(50, 5, 5, prompt_init=init), 16)
    for p in (pool.prompts, pool.keys):
        assert p.min() >= low and p.max() < high
        assert p.max() - p.min() > 0.8 * (high - low)


def test_bad_pool_arguments_are_rejected():
    with pytest.raises(ValueError, match="pool_size 3 < top_n 5"):
        PromptPool(PoolConfig(pool_size=3, top_n=5), embed_dim=4)
    with pytest.raises(ValueError, match="prompt_length must be >= 1, got 0"):
        PromptPool(PoolConfig(prompt_length=0), embed_dim=4)
    with pytest.raises(ValueError, match="unknown prompt_init"):
        PromptPool(PoolConfig(prompt_init="normal"), embed_dim=4)
