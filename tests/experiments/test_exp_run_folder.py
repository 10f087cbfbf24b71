"""Run folders and the study command line: refusals, resume checks, quick overrides, tables."""

from __future__ import annotations

import json

import pytest

from experiments.random_labels import RandomLabelsConfig, main
from experiments.run_folder import apply_quick, markdown_table, open_run_dir, parse_study_args


def test_a_finished_run_is_refused_without_resume_or_overwrite(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    (root / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a finished run.*--resume.*--overwrite"):
        open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    (root / "results.json").unlink()
    with pytest.raises(FileExistsError, match="holds an unfinished run"):
        open_run_dir(root, {"a": 1}, resume=False, overwrite=False)


def test_resume_keeps_cells_and_overwrite_deletes_them(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    (root / "cells").mkdir()
    open_run_dir(root, {"a": 1}, resume=True, overwrite=False)
    assert (root / "cells").is_dir()
    open_run_dir(root, {"a": 2}, resume=False, overwrite=True)
    assert not (root / "cells").exists()
    assert json.loads((root / "config.json").read_text()) == {"a": 2}


def test_resume_with_other_settings_and_both_flags_are_refused(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1, "b": 2}, resume=False, overwrite=False)
    with pytest.raises(ValueError, match=r"other settings \(b\)"):
        open_run_dir(root, {"a": 1, "b": 3}, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="not both"):
        open_run_dir(root, {"a": 1}, resume=True, overwrite=True)


def test_yaml_flags_and_quick_settings_reach_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run: full\nfractions: [0.0, 0.5]\ntrain:\n  max_epochs: 7\n"
        "quick_settings:\n  run: q\n  train.max_epochs: 2\n  image.enabled: false\n"
    )
    cfg, flags = parse_study_args(RandomLabelsConfig, ["--config", str(path), "--quick", "--seed", "4"], "t")
    assert flags == {"quick": True, "resume": False, "overwrite": False}
    assert (cfg.run, cfg.seed, cfg.fractions, cfg.train.max_epochs) == ("full", 4, [0.0, 0.5], 7)
    apply_quick(cfg, flags["quick"])
    assert (cfg.run, cfg.train.max_epochs, cfg.image.enabled) == ("q", 2, False)
    cfg.quick_settings = {"train.nope": 1}
    with pytest.raises(ValueError, match="'train.nope' names no setting of TrainConfig"):
        apply_quick(cfg, True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fractions", "[0.0, 1.2]"], r"corruption fraction p must be a number in \[0, 1\].*1\.2"),
        (["--methods", "[full, ewc]"], r"unknown method 'ewc'"),
        (["--image.methods", "[mome]"], r"unknown image method 'mome'"),
    ],
)
def test_bad_input_on_the_command_line_fails_before_any_work(tmp_path, args, message):
    with pytest.raises(SystemExit, match="error: " + message):
        main(["--output_root", str(tmp_path), "--wandb", "false", *args])
    assert not (tmp_path / "random_labels").exists()


def test_markdown_table_rounds_and_marks_missing_values():
    text = markdown_table([{"p": 0.5, "method": "full", "steps": None}], ["p", "method", "steps"], digits=2)
    assert text.splitlines() == ["| p | method | steps |", "|---|---|---|", "| 0.50 | full | – |"]
