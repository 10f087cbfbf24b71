"""A killed ``memexp fit`` resumed with ``--ckpt_path last`` ends with the files of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from memexp_helpers import QUICK_MODEL

from memexp.cli import main
from memexp.results import ResultsWriter

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "memexp" / "demo.yaml")


def args(root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        DEMO,
        f"--trainer.default_root_dir={root}",
        f"--model.init_args.backbone={QUICK_MODEL}",
        "--data.init_args.num_random_facts=8",
        "--data.init_args.num_heldout=4",
        "--data.init_args.batch_size=4",
        "--model.init_args.lr=1e-2",
        "--trainer.max_epochs=4",
        "--trainer.check_val_every_n_epoch=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def fit(root: Path, *extra: str) -> None:
    main([*args(root, *extra), "--debug"])


def run_files(root: Path) -> dict[str, object]:
    """Everything a run leaves, wall times aside (paths made relative to the run folder)."""
    results = json.loads((root / "results.json").read_text().replace(str(root), "<root>"))
    segments = results.pop("wall_time_segments_s")
    assert results.pop("wall_time_s") == pytest.approx(sum(segments), abs=0.05)
    files = {"results.json": results}
    for name in ("curves.csv", "curves.png", "fact_evals.csv", "run_config.json"):
        files[name] = (root / name).read_bytes()
    for path in sorted((root / "model").iterdir()):
        files[f"model/{path.name}"] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whole") / "run"
    fit(root)
    return root


class Killed(Exception):
    """Stands for a kill: nothing after it runs (RunCheckpoint writes no checkpoint on exceptions)."""


def test_resume_after_a_crash_equals_the_uninterrupted_run(uninterrupted, tmp_path, monkeypatch):
    root = tmp_path / "run"

    def crash_in_epoch_3(self, trainer, pl_module):
        if trainer.current_epoch == 2:  # after the evaluation (and last.ckpt) of epoch 2
            raise Killed

    monkeypatch.setattr(ResultsWriter, "on_train_epoch_start", crash_in_epoch_3, raising=False)
    with pytest.raises(Killed):
        fit(root)
    monkeypatch.undo()
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert not (root / "results.json").exists()
    with pytest.raises(Exception, match=r"unfinished run.*--resume true"):
        fit(root)  # resuming is asked for, never implied
    fit(root, "--ckpt_path=last")
    assert run_files(root) == run_files(uninterrupted)
    results = json.loads((root / "results.json").read_text())
    assert len(results["wall_time_segments_s"]) == 2 and results["initial"]["val/hallucination_rate"] == 1.0


@pytest.mark.slow
def test_sigkill_and_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    """A real ``kill -9`` of ``python -m memexp fit`` after its first checkpoint, then a resume."""
    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memexp", *args(root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = root / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (root / "results.json").exists()
    fit(root, "--ckpt_path=last")
    assert run_files(root) == run_files(uninterrupted)
    assert not list(root.rglob(".*.tmp"))
