"""L2P learner: train_mask, frozen parts bit-identical, optimiser state, cached queries, lr scaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prompt_pool.data_config import LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.l2p import L2P
from prompt_pool.pool import PoolConfig


@pytest.fixture
def dm() -> TaskSequenceDataModule:
    return TaskSequenceDataModule(
        "synthetic",
        source=SourceConfig(synthetic_classes=10),
        split=SplitConfig(num_tasks=5),
        loader=LoaderConfig(batch_size=8),
    )


def _l2p(kw, **extra) -> L2P:
    args = dict(
        num_classes=10,
        backbone_kwargs=kw,
        pool=PoolConfig(pool_size=6, prompt_length=2, top_n=2),
        batch_size=8,
        head_init="default",
        lr_reference_batch=8,
    )
    args.update(extra)
    return L2P(**args)


def test_train_mask_sets_minus_inf_and_gives_zero_gradient_on_other_rows(tiny_vit_kwargs, dm):
    m = _l2p(tiny_vit_kwargs)
    m.begin_task(1, [2, 3])
    x, y, uid = next(iter(dm.train_loader(1)))
    logits, _ = m.logits(x, uid)
    masked = m.mask_logits(logits, [2, 3])
    keep = torch.zeros(10, dtype=torch.bool)
    keep[[2, 3]] = True
    assert torch.isinf(masked[:, ~keep]).all() and (masked[:, ~keep] < 0).all()
    assert torch.equal(masked[:, keep], logits[:, keep])
    F.cross_entropy(masked, y).backward()
    g = m.head.weight.grad
    assert (g[~keep] == 0).all() and (g[keep] != 0).any()


def test_after_a_task_backbone_and_old_head_rows_are_bit_identical_and_only_pool_and_head_have_state(
    tiny_vit_kwargs, dm, make_trainer
):
    m = _l2p(tiny_vit_kwargs)
    m.begin_task(0, dm.tasks[0].classes)
    trainer = make_trainer(2)
    trainer.fit(m, dm.train_loader(0))
    backbone = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    head_w = m.head.weight.detach().clone()
    m.begin_task(1, dm.tasks[1].classes)
    trainer = make_trainer(2)
    trainer.fit(m, dm.train_loader(1))
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in backbone.items())
    old = [c for c in range(10) if c not in dm.tasks[1].classes]
    assert torch.equal(m.head.weight[old], head_w[old])  # fresh Adam + train_mask: old rows untouched
    assert not torch.equal(m.head.weight[dm.tasks[1].classes], head_w[dm.tasks[1].classes])
    opt = trainer.optimizers[0]
    with_state = {id(p) for p in opt.state}
    expected = {id(p) for p in (m.pool.prompts, m.pool.keys, m.head.weight, m.head.bias)}
    assert with_state == expected
    assert {id(p) for g in opt.param_groups for p in g["params"]} == expected


def test_cached_queries_give_same_selections_and_loss_as_recomputed(tiny_vit_kwargs, dm):
    cached, plain = _l2p(tiny_vit_kwargs), _l2p(tiny_vit_kwargs, cache_queries=False)
    plain.load_state_dict(cached.state_dict())
    for m in (cached, plain):
        m.begin_task(0, dm.tasks[0].classes)
    batches = list(dm.train_loader(0)) * 2  # second pass is served from the cache
    for x, y, uid in batches:
        a_logits, a_aux = cached.logits(x, uid)
        b_logits, b_aux = plain.logits(x, uid)
        assert torch.equal(a_aux["ids"], b_aux["ids"])
        assert torch.allclose(a_logits, b_logits, atol=1e-6)
        a = F.cross_entropy(a_logits, y) + cached.extra_loss(x, y, a_logits, a_aux)
        b = F.cross_entropy(b_logits, y) + plain.extra_loss(x, y, b_logits, b_aux)
        assert torch.allclose(a, b, atol=1e-6)
    assert cached.query_cache.hits == len(dm.train_dataset(0)) and cached.query_cache.misses == len(
        dm.train_dataset(0)
    )


def test_learning_rate_is_scaled_by_batch_size(tiny_vit_kwargs):
    m = L2P(
        num_classes=10,
        backbone_kwargs=tiny_vit_kwargs,
        batch_size=16,
        pool=PoolConfig(pool_size=4, top_n=2, prompt_length=1),
    )
    assert m.lr_effective == pytest.approx(0.03 * 16 / 256)  # l2p-pytorch: 0.001875
    m.batch_size = 128
    assert m.lr_effective == pytest.approx(0.015)  # official JAX (global batch 128)


def test_layer_logits_and_dera_reference(tiny_vit_kwargs, dm):
    m = _l2p(tiny_vit_kwargs).eval()
    x, _, uid = next(iter(dm.train_loader(0)))
    per_layer = m.layer_logits(x, uid)
    assert per_layer.early.shape == (2, x.shape[0], 10)  # hidden states 0 (embeddings) and 1
    assert torch.equal(per_layer.mature, m.logits(x, uid)[0])
    assert torch.allclose(m.reference_logits(x, uid), m.head(m.backbone.query(x)), atol=1e-6)
    assert m.pool.task_counts.sum() == 0  # evaluation does not count as usage
