"""The last block run for the pooled rows only: equal to the full block, and L2P trains the same with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

import prompt_pool.backbone as backbone_mod
from prompt_pool.backbone import ViTBackbone
from prompt_pool.l2p import L2P
from prompt_pool.partial_block import block_rows, supports_rows
from prompt_pool.pool import PoolConfig


@pytest.mark.parametrize("qkv_bias,qk_norm", [(True, False), (False, True)])
@pytest.mark.parametrize("rows", [(0, 1), (3, 4), (0, 5), (2, 9)])
def test_block_rows_equals_the_full_block_and_its_gradient(qkv_bias, qk_norm, rows):
    torch.manual_seed(0)
    blk = Block(dim=32, num_heads=4, qkv_bias=qkv_bias, qk_norm=qk_norm).eval()
    h = torch.randn(3, 9, 32, requires_grad=True)  # (B, T, D)
    start, stop = rows
    full = blk(h)[:, start:stop]  # (B, R, D)
    g_full = torch.autograd.grad(full.square().sum(), h)[0]
    part = block_rows(blk, h, start, stop)
    g_part = torch.autograd.grad(part.square().sum(), h)[0]
    assert supports_rows(blk) and part.shape == full.shape
    assert torch.allclose(part, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_part, g_full, atol=1e-5, rtol=1e-5)  # gradient reaches every row of h


def test_an_unknown_block_runs_in_full_then_sliced():
    blk = torch.nn.Sequential(torch.nn.Linear(8, 8))  # not a timm Block
    h = torch.randn(2, 5, 8)
    assert not supports_rows(blk)
    assert torch.equal(block_rows(blk, h, 1, 3), blk(h)[:, 1:3])


@pytest.mark.parametrize("head_type,prompts", [("cls", False), ("cls", True), ("prompt", True)])
def test_pooled_features_equal_pooling_every_full_hidden_state(tiny_vit_kwargs, head_type, prompts):
    torch.manual_seed(0)
    vit = ViTBackbone(model_kwargs=tiny_vit_kwargs)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    p = torch.randn(4, 6, vit.embed_dim) if prompts else None
    n = 0 if p is None else 6
    full = [vit.pool(h, n, head_type) for h in vit.encode(x, p, all_layers=True)]  # every row computed
    fast = vit.pooled_features(x, p, head_type, all_layers=True)
    assert len(fast) == len(full) == vit.depth + 1
    for a, b in zip(fast[:-1], full[:-1]):
        assert torch.equal(a, b)  # the blocks below the last run as before
    assert torch.allclose(fast[-1], full[-1], atol=1e-5)
    assert torch.equal(vit.pooled_features(x, p, head_type)[-1], fast[-1])  # last entry: the same ops


def _train(steps: int, tiny_vit_kwargs: dict) -> tuple[list[torch.Tensor], list[float]]:
    m = L2P(
        num_classes=4,
        backbone_kwargs=tiny_vit_kwargs,
        pool=PoolConfig(pool_size=6, prompt_length=2, top_n=2),
        head_init="default",
        seed=0,
    )
    m.begin_task(0, [0, 1, 2, 3])
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    ids, losses = [], []
    for _ in range(steps):
        x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        logits, aux = m.logits(x)
        loss = F.cross_entropy(logits, y) + m.extra_loss(x, y, logits, aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ids.append(aux["ids"])
        losses.append(float(loss))
    return ids, losses


def test_l2p_selects_and_learns_as_with_the_full_last_block(tiny_vit_kwargs, monkeypatch):
    fast_ids, fast_losses = _train(12, tiny_vit_kwargs)
    monkeypatch.setattr(backbone_mod, "block_rows", lambda blk, h, start, stop: blk(h)[:, start:stop])
    full_ids, full_losses = _train(12, tiny_vit_kwargs)
    assert all(torch.equal(a, b) for a, b in zip(fast_ids, full_ids))
    assert fast_losses == pytest.approx(full_losses, abs=1e-5)
    assert full_losses[-1] < full_losses[0]  # it trains at all
