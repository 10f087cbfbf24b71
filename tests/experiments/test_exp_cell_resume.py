"""A cell killed in the middle of training resumes from its last evaluation, not from scratch."""

from __future__ import annotations

import pytest
import torch
from exp_helpers import QUICK_MODEL, tiny_train

from experiments.cell import read_rows, run_cell
from experiments.code_facts import code_task, corrupt
from experiments.probe import MemorisationProbe


class Killed(Exception):
    """Stands for a kill: no hook after it writes anything."""


def test_a_cell_killed_mid_run_resumes_from_its_last_evaluation(tmp_path, monkeypatch):
    task = code_task(8, 4, seed=0, code_len=2)
    train, corrupted = corrupt(task.train, 0.5, seed=0)
    cfg = tiny_train(max_epochs=4, eval_every=2)

    def go(folder):
        return run_cell(tmp_path / folder, "full", QUICK_MODEL, train, task.heldout, corrupted, cfg, 0)

    whole = go("whole")
    original = MemorisationProbe.on_train_epoch_start
    started, armed = [], [True]

    def kill_in_epoch_4(self, trainer, pl_module):
        started.append(trainer.current_epoch)
        if trainer.current_epoch == 3 and armed[0]:  # epochs 1-2 trained and evaluated, 3 trained only
            armed[0] = False
            raise Killed
        original(self, trainer, pl_module)

    monkeypatch.setattr(MemorisationProbe, "on_train_epoch_start", kill_in_epoch_4)
    with pytest.raises(Killed):
        go("part")
    last = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # written after the evaluation of epoch 2 (0-based 1)
    started.clear()  # from here on, no kill
    resumed = go("part")
    assert started == [2, 3]  # from the last evaluation, not from scratch
    assert read_rows(tmp_path / "part" / "fact_evals.csv") == read_rows(tmp_path / "whole" / "fact_evals.csv")
    drop = {"wall_time_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in whole.items() if k not in drop
    }


def test_a_killed_image_cell_resumes_from_its_last_evaluation(tmp_path):
    """Image cells evaluate in a callback; RunCheckpoint(every_n_epochs) checkpoints after each evaluation."""
    from experiments.image_labels import ImageStudyConfig, run_image_cell

    def cfg(max_epochs: int) -> ImageStudyConfig:
        return ImageStudyConfig(methods=["full"], max_epochs=max_epochs, eval_every=2, num_train=64)

    whole = run_image_cell(tmp_path / "whole", "full", 0.5, cfg(4), seed=0)
    run_image_cell(tmp_path / "part", "full", 0.5, cfg(2), seed=0)  # "killed" after its epoch-2 evaluation
    (tmp_path / "part" / "cell.json").unlink()
    assert (tmp_path / "part" / "checkpoints" / "last.ckpt").is_file()
    resumed = run_image_cell(tmp_path / "part", "full", 0.5, cfg(4), seed=0)

    def rows(folder: str) -> list[dict]:  # NaN (the loss before training) as None: equal rows compare equal
        curve = read_rows(tmp_path / folder / "curve.csv")
        return [{k: None if v != v else v for k, v in r.items()} for r in curve]

    assert rows("part") == rows("whole")
    # the same summary; a float may differ in its last bits (a resumed model's tensors live at other
    # addresses, and CPU kernels may then take another SIMD path: seen once, 1.75146294 vs 1.75146306)
    assert resumed.keys() == whole.keys()
    for key in resumed.keys() - {"wall_time_s"}:
        expected = pytest.approx(whole[key], rel=1e-5) if isinstance(whole[key], float) else whole[key]
        assert resumed[key] == expected, key
