"""A killed sweep resumes per (p, method, seed) cell: finished cells are read back, not trained again."""

from __future__ import annotations

import json

import pytest
from exp_helpers import tiny_base, tiny_train

from experiments import random_labels
from experiments.cell import CELL_FILE
from experiments.image_labels import ImageStudyConfig
from experiments.random_labels import RandomLabelsConfig


class Killed(Exception):
    """Stands for a kill between two cells."""


def test_a_killed_sweep_resumes_per_cell_and_aggregates_every_seed(tmp_path, monkeypatch):
    cfg = RandomLabelsConfig(
        output_root=str(tmp_path), run="r", seeds=[0, 1], fractions=[0.0, 1.0], methods=["full"],
        num_train=6, num_heldout=4, code_len=2, base=tiny_base(), train=tiny_train(max_epochs=1),
        image=ImageStudyConfig(enabled=False), wandb=False,
    )  # fmt: skip
    trained: list[str] = []
    original = random_labels.run_cell

    def counting(cell_dir, *args, **kwargs):
        if not (cell_dir / CELL_FILE).exists():
            if len(trained) == 3 and kill[0]:
                raise Killed
            trained.append(cell_dir.name)
        return original(cell_dir, *args, **kwargs)

    kill = [True]
    monkeypatch.setattr(random_labels, "run_cell", counting)
    with pytest.raises(Killed):
        random_labels.run(cfg)
    assert trained == ["p0.00_full_s0", "p0.00_full_s1", "p1.00_full_s0"]
    kill[0] = False
    results = random_labels.run(cfg, resume=True)
    assert trained[3:] == ["p1.00_full_s1"]  # only the missing cell is trained
    assert [(r["p"], r["seed"]) for r in results["seed_table"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert [r["n_seeds"] for r in results["table"]] == [2, 2]
    root = tmp_path / "random_labels" / "r"
    summary = (root / "summary.md").read_text()
    assert "## Claim: memorising random labels leaves held-out answers mostly unchanged" in summary
    assert "- **full: " in summary and "over 2 seeds" in summary
    assert "[" in (root / "report.md").read_text().split("| p | method |")[1]  # intervals in the table
    assert json.loads((root / "results.json").read_text())["claims"][0]["subject"] == "full"
    for png in ("random_labels_curves.png", "random_labels_summary.png"):
        assert (root / png).stat().st_size > 5_000
