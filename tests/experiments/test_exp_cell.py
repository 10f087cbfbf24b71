"""Cells and sweeps resume exactly: an interrupted run ends with the records of an uninterrupted one."""

from __future__ import annotations

import csv
import shutil

import pytest
from exp_helpers import QUICK_MODEL, tiny_base, tiny_train

from experiments.cell import read_rows, run_cell
from experiments.code_facts import code_task, corrupt
from experiments.random_labels import RandomLabelsConfig, run


def no_nan(rows):
    """Rows with NaN (the before-training loss) as None, so that equal tables compare equal."""
    return [{k: None if v != v else v for k, v in r.items()} for r in rows]


def facts(p: float = 0.5):
    task = code_task(8, 4, seed=0, code_len=2)
    train, corrupted = corrupt(task.train, p, seed=0)
    return train, task.heldout, corrupted


@pytest.mark.parametrize("method", ["full", "lora", "mome"])
def test_a_killed_cell_resumes_from_its_checkpoint_to_the_same_records(tmp_path, method):
    train, heldout, corrupted = facts()
    whole = run_cell(
        tmp_path / "whole", method, QUICK_MODEL, train, heldout, corrupted, tiny_train(max_epochs=4), 0
    )
    # "killed" after 2 epochs: its checkpoint is there, its summary is not
    run_cell(tmp_path / "part", method, QUICK_MODEL, train, heldout, corrupted, tiny_train(max_epochs=2), 0)
    (tmp_path / "part" / "cell.json").unlink()
    resumed = run_cell(
        tmp_path / "part", method, QUICK_MODEL, train, heldout, corrupted, tiny_train(max_epochs=4), 0
    )
    assert read_rows(tmp_path / "part" / "fact_evals.csv") == read_rows(tmp_path / "whole" / "fact_evals.csv")
    assert no_nan(read_rows(tmp_path / "part" / "curve.csv")) == no_nan(
        read_rows(tmp_path / "whole" / "curve.csv")
    )
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == {
        k: v for k, v in whole.items() if k != "wall_time_s"
    }
    rows = read_rows(tmp_path / "whole" / "fact_evals.csv")
    assert sorted({r["epoch"] for r in rows}) == [0, 1, 2, 3, 4]
    assert {int(r["fact_id"]) for r in rows if r["corrupted"]} == set(corrupted)


@pytest.mark.parametrize("method", ["full", "mome"])
def test_a_cell_scores_every_fact_once_per_evaluation(tmp_path, monkeypatch, method):
    """Validation and the probe share evaluations: epochs 0 (probe), 2 (validation), 3 (last: probe)."""
    from memexp import fact_eval, fact_tuning

    scored = []

    def counted(model, batch, heads=None, reference=None):
        scored.extend(batch["fact_ids"].tolist())
        return evaluate_batch(model, batch, heads, reference)

    evaluate_batch = fact_eval.evaluate_batch
    monkeypatch.setattr(fact_eval, "evaluate_batch", counted)
    monkeypatch.setattr(fact_tuning, "evaluate_batch", counted)
    train, heldout, corrupted = facts()
    cfg = tiny_train(max_epochs=3, eval_every=2, heads=["sled", "dera:lam=2"])
    run_cell(tmp_path / "c", method, QUICK_MODEL, train, heldout, corrupted, cfg, 0)
    rows = read_rows(tmp_path / "c" / "fact_evals.csv")
    assert sorted({r["epoch"] for r in rows}) == [0, 2, 3] and len(rows) == 3 * len(train)
    assert {k for k in rows[0] if k.startswith("exact/")} == {"exact/sled", "exact/dera:lam=2"}
    assert len(scored) == 3 * (len(train) + len(heldout))  # training and held-out facts, once each


def test_stop_when_fit_ends_training_at_the_first_evaluation_with_every_fact_recalled(tmp_path):
    """A budget of about 8x what the cell needs here (26 epochs with 1 or 2 threads); the epoch itself is
    not asserted. lr 3e-3: at 1e-2 full fine-tuning of this random tiny model stalls at 7/8 facts."""
    train, heldout, corrupted = facts(0.0)
    cfg = tiny_train(max_epochs=200, stop_when_fit=True, method_options={"full": {"lr": 3e-3}})
    summary = run_cell(tmp_path / "c", "full", QUICK_MODEL, train, heldout, corrupted, cfg, 0)
    curve = read_rows(tmp_path / "c" / "curve.csv")
    assert summary["final_train_exact"] == 1.0 and summary["epochs"] < 200
    assert [r["train/exact"] == 1.0 for r in curve] == [False] * (len(curve) - 1) + [True]
    assert summary["epochs_to_100"] == summary["epochs"] == int(curve[-1]["epoch"])


def tiny_study(root) -> RandomLabelsConfig:
    cfg = RandomLabelsConfig(
        output_root=str(root),
        run="t",
        fractions=[0.0, 1.0],
        methods=["full"],
        num_train=6,
        num_heldout=3,
        code_len=2,
        base=tiny_base(),
        train=tiny_train(max_epochs=2),
        wandb=False,
        seeds=[0],
    )
    cfg.image.enabled = False
    return cfg


def table(root):
    with (root / "random_labels" / "t" / "table.csv").open() as fh:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(fh)]


@pytest.mark.filterwarnings("ignore")
def test_an_interrupted_sweep_resumes_from_its_finished_cells(tmp_path):
    run(tiny_study(tmp_path))
    expected = table(tmp_path)
    root = tmp_path / "random_labels" / "t"
    with pytest.raises(FileExistsError, match="finished run"):
        run(tiny_study(tmp_path))
    # interrupted: the summary and the second cell are gone, the first cell is finished
    (root / "results.json").unlink()
    shutil.rmtree(root / "cells" / "p1.00_full_s0")
    kept = root / "cells" / "p0.00_full_s0" / "cell.json"
    stamp = kept.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="unfinished run"):
        run(tiny_study(tmp_path))
    changed = tiny_study(tmp_path)
    changed.seed = 1
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        run(changed, resume=True)
    run(tiny_study(tmp_path), resume=True)
    assert kept.stat().st_mtime_ns == stamp  # the finished cell was read back, not re-trained
    assert table(tmp_path) == expected
