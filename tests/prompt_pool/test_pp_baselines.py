"""Baselines: replay buffer balance, EWC penalty, LwF distillation, and each strategy through the runner."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from prompt_pool.baselines import EWC, FineTune, LwF
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.replay import ReplayBuffer
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner


@pytest.fixture
def dm() -> TaskSequenceDataModule:
    return TaskSequenceDataModule("synthetic", num_tasks=3, batch_size=8, synthetic_classes=6)


def test_replay_buffer_is_class_balanced_and_checkpointable(dm):
    buf = ReplayBuffer(per_class=3, seed=0)
    buf.add(dm.train_dataset(0), dm.tasks[0].classes, 0)
    buf.add(dm.train_dataset(1), dm.tasks[1].classes, 1)
    assert buf.class_counts(6).tolist() == [3, 3, 3, 3, 0, 0]
    x, y, uid = buf.sample(5, torch.device("cpu"))
    assert x.shape == (5, 1, 8, 8) and set(y.tolist()) <= {0, 1, 2, 3}
    other = ReplayBuffer(per_class=3)
    other.resize_like(buf.state_dict(), prefix="")
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.uid, buf.uid)


def test_frozen_finetune_trains_only_the_head(tiny_vit_kwargs):
    m = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, train_backbone=False)
    assert {id(p) for p in m.trainable_parameters()} == {id(m.head.weight), id(m.head.bias)}
    full = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, train_backbone=True)
    assert len(full.trainable_parameters()) == len(list(full.backbone.parameters())) + 2
    full.train()
    assert full.backbone.vit.training


def test_ewc_penalty_is_zero_at_the_anchor_and_matches_the_formula(tiny_vit_kwargs, dm):
    m = EWC(num_classes=6, backbone_kwargs=tiny_vit_kwargs, ewc_lambda=2.0, fisher_batches=2)
    m.begin_task(0, dm.tasks[0].classes)
    m.end_task(0, dm.train_dataset(0))
    x, y, uid = next(iter(dm.train_loader(0)))
    logits, aux = m.logits(x, uid)
    assert m.extra_loss(x, y, logits, aux).item() == 0.0
    with torch.no_grad():
        m.head.weight.add_(0.1)
    fisher = m.get_buffer("fisher__head__weight")
    assert (fisher >= 0).all() and fisher.sum() > 0
    expect = 0.5 * 2.0 * (fisher * 0.1**2).sum()
    assert m.extra_loss(x, y, logits, aux).item() == pytest.approx(expect.item(), rel=1e-4)


def test_lwf_distillation_is_zero_for_an_unchanged_model_and_positive_after_a_change(tiny_vit_kwargs, dm):
    m = LwF(num_classes=6, backbone_kwargs=tiny_vit_kwargs, temperature=2.0)
    m.eval()  # no dropout either way
    m.begin_task(0, dm.tasks[0].classes)
    m.end_task(0, dm.train_dataset(0))
    m.begin_task(1, dm.tasks[1].classes)
    assert m.old_classes == [0, 1]
    x, y, uid = next(iter(dm.train_loader(1)))
    logits, aux = m.logits(x, uid)
    assert m.extra_loss(x, y, logits, aux).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        m.head.weight[0].add_(torch.randn(m.head.weight.shape[1], generator=torch.Generator().manual_seed(0)))
    logits, aux = m.logits(x, uid)
    old = m.old["head"](m.old["backbone"].query(x))[:, [0, 1]]
    ref = 4.0 * F.kl_div(
        F.log_softmax(logits[:, [0, 1]] / 2, -1), F.softmax(old / 2, -1), reduction="batchmean"
    )
    assert m.extra_loss(x, y, logits, aux).item() == pytest.approx(ref.item(), rel=1e-5) and ref > 0


class Kill(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.task == 2:
            raise RuntimeError("killed")


@pytest.mark.parametrize(
    "cls,kw",
    [
        (FineTune, dict(train_backbone=False, train_mask=False)),
        (FineTune, dict(train_backbone=True, buffer_per_class=2)),
        (EWC, dict(fisher_batches=1)),
        (LwF, dict()),
    ],
)
def test_each_baseline_runs_and_resumes_through_the_same_runner(
    tmp_path, tiny_vit_kwargs, make_trainer, cls, kw
):
    def build():
        return cls(
            num_classes=6,
            backbone_kwargs=tiny_vit_kwargs,
            batch_size=8,
            lr=1e-3,
            lr_reference_batch=None,
            **kw,
        )

    def data():
        return TaskSequenceDataModule("synthetic", num_tasks=3, batch_size=8, synthetic_classes=6)

    ref = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path / "a"), plots=False), make_trainer).run(
        build(), data()
    )
    assert ref.accuracy.shape == (3, 3) and ref.usage is None
    cfg = RunnerConfig(out_dir=str(tmp_path / "b"), plots=False)
    with pytest.raises(RuntimeError, match="killed"):
        TaskSequenceRunner(cfg, lambda: make_trainer(callbacks=[Kill()])).run(build(), data())
    res = TaskSequenceRunner(replace(cfg, resume=True), make_trainer).run(
        build(), data()
    )  # replay buffer / Fisher / old model restored
    assert torch.equal(res.correct, ref.correct)


def test_cached_frozen_features_equal_recomputed_ones(tiny_vit_kwargs, dm):
    cached = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, cache_features=True)
    plain = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, cache_features=False)
    plain.load_state_dict(cached.state_dict())
    for _ in range(2):  # second pass served from the cache
        for x, _, uid in dm.train_loader(0):
            assert torch.allclose(cached.logits(x, uid)[0], plain.logits(x, uid)[0], atol=1e-6)
    assert cached.feature_cache.hits == len(dm.train_dataset(0))
