"""Runner: accuracy matrix, resume after a kill, task-IL masking, domain-IL, joint training, no overwrite."""

from __future__ import annotations

import json
from dataclasses import replace

import lightning as L
import pytest
import torch

from decoding.errors import UserError
from prompt_pool.data_config import LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.l2p import L2P
from prompt_pool.pool import PoolConfig
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner


class Kill(L.Callback):
    """Simulates a killed process in the middle of a given task."""

    def __init__(self, task: int) -> None:
        self.task = task

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.task == self.task and batch_idx == 1:
            raise RuntimeError("killed")


def _setup(kw, setting="class", joint=False):
    dm = TaskSequenceDataModule(
        "synthetic",
        source=SourceConfig(synthetic_classes=6),
        split=SplitConfig(setting=setting, num_tasks=3, joint=joint),
        loader=LoaderConfig(batch_size=8),
    )
    m = L2P(
        num_classes=dm.num_classes,
        backbone_kwargs=kw,
        pool=PoolConfig(pool_size=6, prompt_length=2, top_n=2),
        batch_size=8,
        lr_reference_batch=8,
        seed=0,
    )
    return dm, m


def test_full_run_fills_matrix_and_writes_results(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs)
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path)), lambda: make_trainer(2)).run(m, dm)
    assert r.accuracy.shape == (3, 3) and not torch.isnan(r.accuracy).any()  # future rows evaluated too
    assert r.correct[:, 2].tolist() == [
        round(a * n / 100) for a, n in zip(r.accuracy[:, 2].tolist(), r.totals.tolist())
    ]
    assert r.metrics["average_accuracy"] == pytest.approx(float(r.accuracy[:, 2].mean()))
    assert r.baseline is not None and r.usage.shape == (3, 6) and (r.usage.sum(1) > 0).all()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["forgetting"] == pytest.approx(r.metrics["forgetting"])
    assert (tmp_path / "accuracy_matrix.png").stat().st_size > 0 and (
        tmp_path / "prompt_usage_task2.png"
    ).exists()


def test_killed_run_resumes_at_its_task_and_ends_with_the_same_matrix(
    tmp_path, tiny_vit_kwargs, make_trainer
):
    dm, m = _setup(tiny_vit_kwargs)
    ref = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path / "ref")), lambda: make_trainer(2)).run(m, dm)

    dm, m = _setup(tiny_vit_kwargs)
    cfg = RunnerConfig(out_dir=str(tmp_path / "killed"))
    with pytest.raises(RuntimeError, match="killed"):
        TaskSequenceRunner(cfg, lambda: make_trainer(2, callbacks=[Kill(1)])).run(m, dm)
    state = torch.load(tmp_path / "killed" / "state.pt", weights_only=True)
    assert int(state["next_task"]) == 1  # task 0 finished, task 1 was running

    dm, fresh = _setup(tiny_vit_kwargs)  # a new process: fresh objects
    with pytest.raises(UserError, match="unfinished run.*--runner.resume true"):  # only when asked
        TaskSequenceRunner(cfg, lambda: make_trainer(2)).run(fresh, dm)
    res = TaskSequenceRunner(replace(cfg, resume=True), lambda: make_trainer(2)).run(fresh, dm)
    assert torch.equal(res.correct, ref.correct)
    assert torch.equal(res.usage, ref.usage)


def test_the_run_folder_holds_one_configuration(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs)
    cfg = RunnerConfig(out_dir=str(tmp_path), plots=False)
    TaskSequenceRunner(cfg, lambda: make_trainer(1)).run(m, dm)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "run_config.json").read_text()) == {
        "runner.eval_future_tasks": True,
        "runner.seed": 0,
    }
    for other, match in [
        (cfg, "already holds a finished run"),
        (replace(cfg, resume=True), "already holds a finished run"),
        (replace(cfg, seed=1), r"other settings \(runner.seed\)"),
    ]:
        with pytest.raises(UserError, match=match):
            TaskSequenceRunner(other, lambda: make_trainer(1)).run(m, dm)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved  # a refused start writes nothing
    dm, m = _setup(tiny_vit_kwargs)
    r = TaskSequenceRunner(replace(cfg, seed=1, overwrite=True), lambda: make_trainer(1)).run(m, dm)
    assert json.loads((tmp_path / "results.json").read_text())["config"]["runner.seed"] == 1
    assert r.accuracy.shape == (3, 3)


def test_a_dry_run_neither_reads_nor_writes_the_run_folder(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs)
    out = tmp_path / "run"
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(out)), lambda: make_trainer(1), write=False).run(m, dm)
    assert not out.exists() and r.accuracy.shape == (3, 3)


def test_task_incremental_evaluation_masks_to_the_task_classes(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs, setting="task")
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path / "t")), lambda: make_trainer(1)).run(m, dm)
    # an independent check on the final model: masked argmax per task
    m.eval()
    for i, task in enumerate(dm.tasks):
        x, y = task.test.x, task.test.y
        uid = torch.arange(len(y)) + 10_000  # fresh ids: no cache involvement
        logits = m.logits(x, uid)[0]
        pred = torch.tensor(task.classes)[logits[:, task.classes].argmax(1)]
        assert r.correct[i, 2] == int((pred == y).sum())


def test_domain_incremental_tasks_share_classes_and_change_inputs(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs, setting="domain")
    assert all(t.classes == list(range(6)) for t in dm.tasks)
    assert torch.equal(dm.tasks[1].train.x, torch.rot90(dm.tasks[0].train.x, 1, (-2, -1)))
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path)), lambda: make_trainer(1)).run(m, dm)
    assert r.accuracy.shape == (3, 3)


def test_joint_training_is_one_stage_evaluated_per_task(tmp_path, tiny_vit_kwargs, make_trainer):
    dm, m = _setup(tiny_vit_kwargs, joint=True)
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path)), lambda: make_trainer(1)).run(m, dm)
    assert torch.isnan(r.accuracy[:, :2]).all() and not torch.isnan(r.accuracy[:, 2]).any()
    assert r.metrics["average_accuracy"] == pytest.approx(float(r.accuracy[:, 2].mean()))
    assert m.task_classes == list(range(6))


def test_a_state_file_that_does_not_fit_the_model_is_one_clear_error(tmp_path, tiny_vit_kwargs, make_trainer):
    """A folder from before run_config.json (nothing to compare) resumed with another pool size."""
    dm, m = _setup(tiny_vit_kwargs)
    cfg = RunnerConfig(out_dir=str(tmp_path), plots=False)
    TaskSequenceRunner(cfg, lambda: make_trainer(1)).run(m, dm)
    (tmp_path / "results.json").unlink()
    (tmp_path / "run_config.json").unlink()
    dm, _ = _setup(tiny_vit_kwargs)
    other = L2P(
        num_classes=dm.num_classes,
        backbone_kwargs=tiny_vit_kwargs,
        pool=PoolConfig(pool_size=4, top_n=2, prompt_length=2),
    )
    with pytest.raises(
        UserError, match=r"cannot resume from .*state\.pt.*size mismatch.*--runner\.overwrite true"
    ):
        TaskSequenceRunner(replace(cfg, resume=True), lambda: make_trainer(1)).run(other, dm)


def test_a_csv_logger_gets_every_task_row_and_the_final_metrics(tmp_path, tiny_vit_kwargs, make_trainer):
    """The task loop logs after ``fit`` returns: each row is flushed, the last task's included, and the
    final forgetting / BWT / FWT are logged metrics, not only entries of results.json."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    dm, m = _setup(tiny_vit_kwargs)
    logger = CSVLogger(tmp_path / "logs", name="", version="")
    cfg = RunnerConfig(out_dir=str(tmp_path / "run"))
    res = TaskSequenceRunner(cfg, lambda: make_trainer(1, logger=logger)).run(m, dm)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    assert {row["cl/task"] for row in rows if row.get("cl/task")} == {"0", "1", "2"}
    final = next(row for row in rows if row.get("cl/final/forgetting"))
    assert float(final["cl/final/forgetting"]) == pytest.approx(res.metrics["forgetting"])
    assert float(final["cl/final/average_accuracy"]) == pytest.approx(res.metrics["average_accuracy"])
