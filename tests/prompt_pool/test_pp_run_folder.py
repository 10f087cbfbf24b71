"""``prompt-pool fit`` and its run folder: one configuration per folder, resume/overwrite only when asked,
fast_dev_run never writes, wandb follows the folder and WANDB_MODE, ``--help`` answers fast."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prompt_pool.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory, base_args) -> Path:
    """One finished tiny run (2 tasks, 1 epoch) through the CLI."""
    out = tmp_path_factory.mktemp("finished") / "run"
    main(base_args(out))
    assert (out / "results.json").exists() and (out / "run_config.json").exists()
    return out


def test_settings_are_recorded_without_those_that_do_not_change_results(finished):
    settings = json.loads((finished / "run_config.json").read_text())
    assert settings["model.init_args.pool.pool_size"] == 10 and settings["data.dataset"] == "synthetic"
    assert settings["trainer.max_epochs"] == 1 and settings["runner.seed"] == 0
    assert not [k for k in settings if k.startswith(("trainer.logger", "runner.out_dir", "runner.resume"))]
    assert "seed_everything" not in settings and "model.init_args.num_classes" not in settings


@pytest.mark.parametrize(
    "extra",
    [[], ["--runner.resume", "true"], ["--trainer.enable_progress_bar", "true", "--runner.plots", "false"]],
)
def test_a_finished_run_is_refused_even_with_display_settings_changed(finished, capsys, extra, base_args):
    before = _snapshot(finished)
    err = _refused(capsys, base_args(finished) + extra)
    assert "already holds a finished run with these settings; pass --runner.overwrite true" in err
    assert _snapshot(finished) == before


def test_other_settings_are_refused_naming_each_of_them(finished, capsys, base_args):
    before = _snapshot(finished)
    err = _refused(
        capsys, base_args(finished) + ["--model.init_args.lr", "0.5", "--model.init_args.pool.pool_size", "7"]
    )
    assert "holds a run with other settings (model.init_args.lr, model.init_args.pool.pool_size)" in err
    assert "--runner.overwrite true" in err and _snapshot(finished) == before


def test_fast_dev_run_never_reads_or_writes_a_run_folder(finished, tmp_path, capsys, base_args):
    before = _snapshot(finished)
    main(base_args(finished) + ["--trainer.fast_dev_run", "true", "--model.init_args.lr", "0.5"])
    assert json.loads(capsys.readouterr().out)["fast_dev_run"] is True
    assert _snapshot(finished) == before
    main(base_args(tmp_path / "fresh") + ["--trainer.fast_dev_run", "true"])
    assert not (tmp_path / "fresh").exists()


def test_an_unfinished_run_continues_only_when_asked(finished, tmp_path, capsys, base_args):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "results.json").unlink()  # as if killed after its last task was saved
    before = _snapshot(run)
    err = _refused(capsys, base_args(run))
    assert "holds an unfinished run with these settings; pass --runner.resume true" in err
    assert _snapshot(run) == before
    main(base_args(run) + ["--runner.resume", "true"])
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["metrics"] == json.loads((finished / "results.json").read_text())["metrics"]


def test_overwrite_deletes_the_old_run_and_records_the_new_settings(finished, tmp_path, base_args):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    main(
        base_args(run)
        + ["--runner.overwrite", "true", "--model.init_args.lr", "0.5", "--runner.plots", "false"]
    )
    assert json.loads((run / "run_config.json").read_text())["model.init_args.lr"] == 0.5
    assert json.loads((run / "results.json").read_text())["config"]["model.init_args.lr"] == 0.5
    assert not list(run.glob("*.png"))  # the old run's plots went with it (this one writes none)


@pytest.mark.parametrize(
    "mode,expect", [(None, "offline"), ("offline", "offline"), ("online", "online"), ("disabled", None)]
)
def test_wandb_honours_WANDB_MODE_and_writes_into_the_run_folder(
    tmp_path, monkeypatch, mode, expect, base_args
):
    from lightning.pytorch.loggers import WandbLogger

    from prompt_pool.lightning_cli import cli

    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    args = base_args(tmp_path / "run")[1:]  # no subcommand with run=False
    i = args.index("--trainer.logger")
    del args[i : i + 2]  # the configured default: WandbLogger(offline=True)
    logger = cli(args, run=False).trainer.logger
    if expect is None:
        assert logger is None
    else:
        assert isinstance(logger, WandbLogger) and logger._offline == (expect == "offline")
        assert Path(logger.save_dir) == tmp_path / "run"
    assert not (tmp_path / "run").exists()  # nothing written before fit


def test_help_answers_in_well_under_3_s_without_torch(tmp_path):
    code = (
        "import sys\nfrom prompt_pool.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'timm', 'transformers') if m in sys.modules))"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0 and "usage: prompt-pool" in done.stdout, done.stderr
    assert done.stdout.strip().endswith("[]")  # no heavy import at all (was ~12 s on the CI box)
    assert wall < 3.0, wall
