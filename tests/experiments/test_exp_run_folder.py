"""Run folders and the study command line: the shared run-folder rule, --quick, wandb mode, tables."""

from __future__ import annotations

import json

import pytest

from decoding.errors import UserError
from decoding.run_folder import RUN_CONFIG_FILE
from experiments.random_labels import RandomLabelsConfig
from experiments.study_cli import apply_quick, explicit_keys, parse_study_args
from experiments.study_folder import RunFolderTaken, open_run_dir
from experiments.study_report import markdown_table, wandb_logger


def snapshot(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show that a refused start changed nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_identical_rerun_of_a_finished_run_is_refused_and_leaves_it_untouched(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    (root / "results.json").write_text("{}")
    before = snapshot(root)
    for resume in (False, True):
        with pytest.raises(UserError, match="already holds a finished run.*--overwrite.*another --run name"):
            open_run_dir(root, {"a": 1}, resume=resume, overwrite=False)
    assert snapshot(root) == before


def test_unfinished_run_resumes_only_when_asked_and_keeps_its_cells(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    (root / "cells").mkdir()
    (root / "cells" / "cell.json").write_text("{}")
    with pytest.raises(RunFolderTaken, match="unfinished run with these settings; pass --resume") as err:
        open_run_dir(root, {"a": 1}, resume=False, overwrite=False)
    assert isinstance(err.value, FileExistsError) and isinstance(err.value, UserError)
    open_run_dir(root, {"a": 1}, resume=True, overwrite=False)
    assert (root / "cells" / "cell.json").exists()
    open_run_dir(root, {"a": 2}, resume=False, overwrite=True)
    assert not (root / "cells").exists()
    assert json.loads((root / RUN_CONFIG_FILE).read_text()) == {"a": 2}


def test_other_settings_are_refused_naming_the_keys_and_nothing_changes(tmp_path):
    root = tmp_path / "run"
    open_run_dir(root, {"a": 1, "train": {"lr": 1, "epochs": 3}}, resume=False, overwrite=False)
    before = snapshot(root)
    for resume in (False, True):
        with pytest.raises(UserError, match=r"other settings \(a, train.lr\).*--overwrite"):
            open_run_dir(root, {"a": 2, "train": {"lr": 2, "epochs": 3}}, resume=resume, overwrite=False)
    with pytest.raises(UserError, match="not both"):
        open_run_dir(root, {"a": 1}, resume=True, overwrite=True)
    assert snapshot(root) == before


def test_refused_start_of_a_new_folder_creates_nothing(tmp_path):
    with pytest.raises(UserError, match="holds no run to resume; drop --resume"):
        open_run_dir(tmp_path / "new", {"a": 1}, resume=True, overwrite=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], (False, False)),
        (["--resume"], (True, False)),
        (["--resume", "true", "--overwrite=false"], (True, False)),
        (["--overwrite", "true"], (False, True)),
        (["--overwrite"], (False, True)),
    ],
)
def test_resume_and_overwrite_take_the_words_of_every_command(tmp_path, args, expected):
    """Bare ``--resume`` (the studies' own) and ``--resume true`` (memexp's and prompt-pool's) both work."""
    path = tmp_path / "c.yaml"
    path.write_text("run: x\n")
    _, flags = parse_study_args(RandomLabelsConfig, ["--config", str(path), *args], "t", "prog")
    assert (flags["resume"], flags["overwrite"]) == expected


def test_quick_fills_in_only_what_the_command_line_did_not_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run: full\nnum_train: 200\nfractions: [0.0, 0.5]\ntrain:\n  max_epochs: 7\n"
        "quick_settings:\n  run: q\n  num_train: 50\n  train.max_epochs: 2\n  image.enabled: false\n"
    )
    args = ["--config", str(path), "--quick", "--seed", "4", "--num_train", "0", "--train.max_epochs=9"]
    cfg, flags = parse_study_args(RandomLabelsConfig, args, "t", "prog")
    assert flags == {"quick": True, "resume": False, "overwrite": False}
    assert (cfg.run, cfg.seed, cfg.fractions, cfg.image.enabled) == (
        "q",
        4,
        [0.0, 0.5],
        False,
    )  # quick filled
    assert (cfg.num_train, cfg.train.max_epochs) == (0, 9)  # explicit flags win over --quick
    cfg, _ = parse_study_args(RandomLabelsConfig, ["--config", str(path)], "t", "prog")
    assert (cfg.run, cfg.num_train, cfg.train.max_epochs) == ("full", 200, 7)  # no --quick: the file


def test_explicit_keys_and_bad_quick_keys():
    assert explicit_keys(["--config", "c.yaml", "--quick", "--a.b=1", "--c", "2", "x"]) == {"a.b", "c"}
    cfg = RandomLabelsConfig(quick_settings={"train": 1, "image.max_epochs": 3})
    apply_quick(cfg, True, keep={"train", "image"})  # kept: under a key set on the command line
    assert cfg.image.max_epochs == 300
    cfg.quick_settings = {"train.nope": 1}
    with pytest.raises(UserError, match="'train.nope' names no setting of TrainConfig"):
        apply_quick(cfg, True)


@pytest.mark.parametrize("mode", ["offline", "online", "disabled", ""])
def test_wandb_logger_follows_wandb_mode_and_the_run_folder(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", mode)
    logger = wandb_logger(True, tmp_path / "run", "p", "n", "g")
    if mode == "disabled":
        assert logger is False and not (tmp_path / "run").exists()
        return
    assert logger._wandb_init["mode"] == (mode or "offline")
    assert logger.save_dir == str(tmp_path / "run")
    assert not logger._offline  # Lightning's offline=True would overwrite $WANDB_MODE for the process
    assert wandb_logger(False, tmp_path, "p", "n", "g") is False


def test_markdown_table_rounds_and_marks_missing_values():
    text = markdown_table([{"p": 0.5, "method": "full", "steps": None}], ["p", "method", "steps"], digits=2)
    assert text.splitlines() == ["| p | method | steps |", "|---|---|---|", "| 0.50 | full | – |"]
