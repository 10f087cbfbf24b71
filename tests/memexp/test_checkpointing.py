"""``RunCheckpoint``: last.ckpt is the last state whatever the metric does; a killed writer loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from memexp_helpers import quick_trainer

from memexp.checkpointing import BEST, LAST, RunCheckpoint

ROOT = Path(__file__).resolve().parents[2]


def test_last_ckpt_is_the_last_state_when_the_monitored_metric_plateaus(small_facts, tmp_path):
    module, dm = small_facts(n=8, lr=1e-9)  # lr ~0: the hallucination rate stays at 1.0 (never improves)
    ckpt = RunCheckpoint(monitor="val/hallucination_rate", mode="min")
    trainer = quick_trainer(tmp_path, max_epochs=3, callbacks=[ckpt])
    trainer.fit(module, datamodule=dm)
    last = torch.load(tmp_path / "checkpoints" / LAST, weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, trainer.global_step)  # the end, not epoch 0
    assert "optimizer_states" in last and "RunCheckpoint" in last["callbacks"]
    best = torch.load(tmp_path / "checkpoints" / BEST, weights_only=True)
    assert best["epoch"] == 0 and "optimizer_states" not in best  # first value stays best; weights only
    assert trainer.checkpoint_callback is ckpt and ckpt.best_model_score == 1.0


def test_no_monitor_writes_no_best_and_every_n_train_steps_writes_mid_epoch(small_facts, tmp_path):
    module, dm = small_facts(n=8)  # batch 4: 2 steps per epoch
    steps = []

    class Spy(RunCheckpoint):
        def _save_last(self, trainer):
            super()._save_last(trainer)
            steps.append(trainer.global_step)

    trainer = quick_trainer(
        tmp_path, max_epochs=2, check_val_every_n_epoch=2, callbacks=[Spy(every_n_train_steps=1)]
    )
    trainer.fit(module, datamodule=dm)
    assert steps == [1, 2, 3, 4, 4]  # every step, then after the evaluation at the end of epoch 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [LAST]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from memexp.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = sys.argv[1]
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "epoch": 1}, path)
    print("first", flush=True)
    big = {f"w{i}": torch.zeros(4 * 2**20) for i in range(64)}  # 64 x 16 MB: the kill lands mid-write
    io.save_checkpoint({"state_dict": big, "epoch": 2}, path)
    print("second", flush=True)
    """
)


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint_whole(tmp_path):
    shm = Path("/dev/shm")
    tmpdir = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path))
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / LAST
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(last)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the second write is under way, then kill it
            temps = list(ckpt_dir.glob(".last.ckpt.*.tmp"))
            if temps and temps[0].stat().st_size > 32 * 2**20:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(ckpt_dir.glob(".last.ckpt.*.tmp")), "the kill did not land mid-write"
    old = torch.load(last, weights_only=True)  # the previous checkpoint, whole
    assert old["epoch"] == 1 and torch.equal(old["state_dict"]["w"], torch.ones(4))
    assert list(tmpdir.iterdir()) == []  # nothing went through $TMPDIR
    tmpdir.rmdir()

    # the next start clears the orphan
    from lightning.pytorch import Trainer

    trainer = Trainer(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False)
    RunCheckpoint().setup(trainer, None, "fit")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [LAST]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        RunCheckpoint(mode="lowest")
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 0"):
        RunCheckpoint(every_n_train_steps=-1)


def test_a_run_stopped_early_stays_stopped_when_resumed(small_facts, tmp_path):
    import lightning as L

    class StopAfterFirstEpoch(L.Callback):  # stands for EarlyStopping reaching its threshold
        def on_validation_end(self, trainer, pl_module):
            trainer.should_stop = True

    module, dm = small_facts(n=8)
    trainer = quick_trainer(tmp_path, max_epochs=5, callbacks=[StopAfterFirstEpoch(), RunCheckpoint()])
    trainer.fit(module, datamodule=dm)
    steps = trainer.global_step
    module, dm = small_facts(n=8)  # "killed" before its results were written; resumed without the stopper
    again = quick_trainer(tmp_path, max_epochs=5, callbacks=[RunCheckpoint()])
    again.fit(module, datamodule=dm, ckpt_path=str(tmp_path / "checkpoints" / LAST))
    assert again.global_step == steps  # no epoch trained past the stop

    extend = RunCheckpoint()
    extend.restore_stop = False  # what memexp fit --extend true does
    module, dm = small_facts(n=8)
    third = quick_trainer(tmp_path, max_epochs=2, callbacks=[extend])
    third.fit(module, datamodule=dm, ckpt_path=str(tmp_path / "checkpoints" / LAST))
    assert third.global_step == 2 * steps
