"""Baselines and add-ons: replay buffer balance, EWC penalty, LwF distillation, every learner + add-on
combination through the runner (with resume), and equivalence with the former subclass versions."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from legacy_baselines import LegacyEWC, LegacyFineTune, LegacyLwF

import prompt_pool.addons
from prompt_pool.addons import EWC, LwF, Replay
from prompt_pool.baselines import FineTune
from prompt_pool.data_config import LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.l2p import L2P
from prompt_pool.pool import PoolConfig
from prompt_pool.replay import ReplayBuffer
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner


@pytest.fixture
def dm() -> TaskSequenceDataModule:
    return TaskSequenceDataModule(
        "synthetic",
        source=SourceConfig(synthetic_classes=6),
        split=SplitConfig(num_tasks=3),
        loader=LoaderConfig(batch_size=8),
    )


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
    m = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, train_backbone=True)
    ewc = EWC(ewc_lambda=2.0, fisher_batches=2)
    ewc.begin_task(m, 0, dm.tasks[0].classes)
    m.begin_task(0, dm.tasks[0].classes)
    ewc.end_task(m, 0, dm.train_dataset(0))
    x, y, uid = next(iter(dm.train_loader(0)))
    logits, aux = m.logits(x, uid)
    assert ewc.loss(m, x, y, uid, logits, aux).item() == 0.0
    with torch.no_grad():
        m.head.weight.add_(0.1)
    fisher = ewc.fisher["head.weight"]
    assert (fisher >= 0).all() and fisher.sum() > 0
    expect = 0.5 * 2.0 * (fisher * 0.1**2).sum()
    assert ewc.loss(m, x, y, uid, logits, aux).item() == pytest.approx(expect.item(), rel=1e-4)


def test_lwf_distillation_is_zero_for_an_unchanged_model_and_positive_after_a_change(tiny_vit_kwargs, dm):
    m = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, train_backbone=True)
    lwf = LwF(temperature=2.0)
    m.eval()  # no dropout either way
    for task in (0, 1):
        lwf.begin_task(m, task, dm.tasks[task].classes)
        m.begin_task(task, dm.tasks[task].classes)
        if task == 0:
            lwf.end_task(m, 0, dm.train_dataset(0))
    assert lwf.old_classes == [0, 1]
    x, y, uid = next(iter(dm.train_loader(1)))
    logits, aux = m.logits(x, uid)
    assert lwf.loss(m, x, y, uid, logits, aux).item() == pytest.approx(0.0, abs=1e-6)
    old = m.head(m.backbone.query(x))[:, [0, 1]]  # the model as it was after task 0
    with torch.no_grad():
        m.head.weight[0].add_(torch.randn(m.head.weight.shape[1], generator=torch.Generator().manual_seed(0)))
    logits, aux = m.logits(x, uid)
    ref = 4.0 * F.kl_div(
        F.log_softmax(logits[:, [0, 1]] / 2, -1), F.softmax(old / 2, -1), reduction="batchmean"
    )
    assert lwf.loss(m, x, y, uid, logits, aux).item() == pytest.approx(ref.item(), rel=1e-5) and ref > 0


class Kill(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.task == 2:
            raise RuntimeError("killed")


class Losses(L.Callback):
    """Records every training step's loss."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def _learner(kind: str, kw: dict):
    common = dict(num_classes=6, backbone_kwargs=kw, batch_size=8, lr=1e-3, lr_reference_batch=None, seed=0)
    if kind == "l2p":
        return L2P(pool=PoolConfig(pool_size=6, prompt_length=2, top_n=2), **common)
    return FineTune(train_backbone=kind == "ft_full", train_mask=False, **common)


# every add-on with more than one learner: L2P + EWC, L2P + replay (L2P-R), FineTune + LwF...
COMBINATIONS = [
    ("ft_head", ()),
    ("ft_full", (("Replay", dict(per_class=2)),)),
    ("ft_full", (("EWC", dict(fisher_batches=1)),)),
    ("ft_full", (("LwF", dict()),)),
    ("l2p", (("EWC", dict(fisher_batches=1)),)),
    ("l2p", (("Replay", dict(per_class=2)),)),
    ("l2p", (("LwF", dict()),)),
    ("ft_head", (("Replay", dict(per_class=2)), ("EWC", dict(fisher_batches=1)))),
]


@pytest.mark.parametrize(
    "kind,addons", COMBINATIONS, ids=["+".join([k, *(a for a, _ in ad)]) for k, ad in COMBINATIONS]
)
def test_each_learner_and_addon_combination_runs_and_resumes(
    tmp_path, tiny_vit_kwargs, make_trainer, kind, addons
):
    def build():
        return [getattr(prompt_pool.addons, name)(**kw) for name, kw in addons]

    def data():
        return TaskSequenceDataModule(
            "synthetic",
            source=SourceConfig(synthetic_classes=6),
            split=SplitConfig(num_tasks=3),
            loader=LoaderConfig(batch_size=8),
        )

    ref_addons = build()
    ref = TaskSequenceRunner(
        RunnerConfig(out_dir=str(tmp_path / "a"), plots=False), lambda: make_trainer(callbacks=ref_addons)
    ).run(_learner(kind, tiny_vit_kwargs), data())
    assert ref.accuracy.shape == (3, 3)
    assert (ref.usage is not None) == (kind == "l2p")
    cfg = RunnerConfig(out_dir=str(tmp_path / "b"), plots=False)
    killed = build()
    with pytest.raises(RuntimeError, match="killed"):
        TaskSequenceRunner(cfg, lambda: make_trainer(callbacks=[*killed, Kill()])).run(
            _learner(kind, tiny_vit_kwargs), data()
        )
    fresh = build()  # a new process: the add-ons' states (buffer, Fisher, old model) come from state.pt
    res = TaskSequenceRunner(replace(cfg, resume=True), lambda: make_trainer(callbacks=fresh)).run(
        _learner(kind, tiny_vit_kwargs), data()
    )
    assert torch.equal(res.correct, ref.correct)
    if kind == "l2p":
        assert torch.equal(res.usage, ref.usage)


@pytest.mark.parametrize(
    "legacy,addon",
    [
        (lambda kw: LegacyFineTune(buffer_per_class=2, **kw), lambda: Replay(per_class=2)),
        (
            lambda kw: LegacyEWC(ewc_lambda=50.0, fisher_batches=2, **kw),
            lambda: EWC(ewc_lambda=50.0, fisher_batches=2),
        ),
        (
            lambda kw: LegacyLwF(lwf_alpha=1.0, temperature=2.0, **kw),
            lambda: LwF(lwf_alpha=1.0, temperature=2.0),
        ),
    ],
    ids=["replay", "ewc", "lwf"],
)
def test_addons_give_the_losses_and_matrices_of_the_former_subclasses(
    tmp_path, tiny_vit_kwargs, make_trainer, legacy, addon
):
    """Equivalence with the plain version: the same seeded stream, step by step."""
    kw = dict(num_classes=6, backbone_kwargs=tiny_vit_kwargs, batch_size=8, lr=1e-3, lr_reference_batch=None)
    kw.update(train_backbone=True, train_mask=False)

    def data():
        return TaskSequenceDataModule(
            "synthetic",
            source=SourceConfig(synthetic_classes=6),
            split=SplitConfig(num_tasks=3),
            loader=LoaderConfig(batch_size=8),
        )

    before, after = Losses(), Losses()
    old = TaskSequenceRunner(
        RunnerConfig(out_dir=str(tmp_path / "old"), plots=False), lambda: make_trainer(callbacks=[before])
    ).run(legacy(kw), data())
    extra = addon()
    new = TaskSequenceRunner(
        RunnerConfig(out_dir=str(tmp_path / "new"), plots=False),
        lambda: make_trainer(callbacks=[extra, after]),
    ).run(FineTune(**kw), data())
    assert len(after.values) == len(before.values) > 0
    assert after.values == before.values  # bit for bit
    assert torch.equal(new.correct, old.correct) and torch.equal(new.baseline, old.baseline)


def test_a_factory_that_makes_new_addons_per_task_is_refused(tmp_path, tiny_vit_kwargs, make_trainer):
    with pytest.raises(ValueError, match="same objects to every Trainer"):
        TaskSequenceRunner(
            RunnerConfig(out_dir=str(tmp_path), plots=False), lambda: make_trainer(callbacks=[EWC()])
        ).run(
            _learner("ft_head", tiny_vit_kwargs),
            TaskSequenceDataModule(
                "synthetic",
                source=SourceConfig(synthetic_classes=4),
                split=SplitConfig(num_tasks=2),
                loader=LoaderConfig(batch_size=8),
            ),
        )


def test_cached_frozen_features_equal_recomputed_ones(tiny_vit_kwargs, dm):
    cached = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, cache_features=True)
    plain = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, cache_features=False)
    plain.load_state_dict(cached.state_dict())
    for _ in range(2):  # second pass served from the cache
        for x, _, uid in dm.train_loader(0):
            assert torch.allclose(cached.logits(x, uid)[0], plain.logits(x, uid)[0], atol=1e-6)
    assert cached.feature_cache.hits == len(dm.train_dataset(0))
