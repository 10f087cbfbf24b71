"""The ``memexp`` CLI on the demo config: results files, the run-folder rule, resume, extend, help, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from decoding.errors import UserError
from memexp.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "memexp" / "demo.yaml")
QUICK = [
    "--data.init_args.num_random_facts=8",
    "--data.init_args.num_heldout=4",
    "--data.init_args.batch_size=4",
    "--trainer.max_epochs=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
]


def fit(root: Path, *extra: str) -> None:
    main(
        [
            "fit",
            "--debug",  # exceptions propagate (the one-line error is tested apart)
            "--config",
            DEMO,
            f"--trainer.default_root_dir={root}",
            *QUICK,
            *extra,
        ]
    )


def fact_rows(root: Path) -> list[dict]:
    with (root / "fact_evals.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_demo_config_writes_results_and_applies_the_run_folder_rule(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "run"
    fit(root)
    results = json.loads((root / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 2
    assert results["initial"]["val/hallucination_rate"] == 1.0
    assert 0.0 <= results["final"]["val/hallucination_rate"] <= 1.0
    assert results["final"]["val/answer_nll"] < results["initial"]["val/answer_nll"]
    assert Path(results["last_checkpoint"]).is_file() and Path(results["best_checkpoint"]).is_file()
    assert torch.load(results["last_checkpoint"], weights_only=True)["epoch"] == 1  # the last state
    assert (root / "curves.png").stat().st_size > 1000
    assert (root / "wandb").is_dir()  # the logger's save_dir follows the run folder
    settings = json.loads((root / "run_config.json").read_text())
    assert settings["data"]["init_args"]["num_random_facts"] == 8
    assert "ckpt_path" not in settings and "logger" not in settings["trainer"]
    from decoding.cli import main as decoding_main

    prompt = "Q: What is the code of the red fox?\nA:"
    decoding_main(
        ["generate", "--model", results["model_dir"], "--prompt", prompt, "--max_new_tokens", "3", "--json"]
    )
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]) <= 3
    rows = fact_rows(root)
    assert len(rows) == 8 * 3  # 8 facts x (initial + 2 epochs)
    assert {r["epoch"] for r in rows} == {"-1", "0", "1"}

    kept = {name: (root / name).read_bytes() for name in ("fact_evals.csv", "config.yaml", "results.json")}
    main(
        [
            "validate",
            "--debug",
            "--config",
            DEMO,
            f"--trainer.default_root_dir={root}",
            *QUICK,
            "--ckpt_path=best",
        ]
    )
    assert {name: (root / name).read_bytes() for name in kept} == kept  # validate leaves the run as it is
    before = kept["results.json"]
    for again in ([], ["--ckpt_path=last"]):  # a finished run is never trained again by accident
        with pytest.raises(UserError, match=r"finished run.*--overwrite true.*--extend true"):
            fit(root, *again)
    with pytest.raises(UserError, match=r"finished run with other settings \(trainer.max_epochs\).*--extend"):
        fit(root, "--ckpt_path=last", "--trainer.max_epochs=3")
    assert (root / "results.json").read_bytes() == before

    (root / "results.json").unlink()  # "killed" after its last checkpoint
    with pytest.raises(UserError, match=r"unfinished run with these settings; pass --resume true"):
        fit(root)
    fit(root, "--resume=true")  # the shared word; --ckpt_path=last does the same (test_memexp_resume.py)
    assert json.loads((root / "results.json").read_text())["epochs"] == 2
    assert len(fact_rows(root)) == 8 * 3  # no evaluation twice

    with pytest.raises(UserError, match=r"other settings \(model.init_args.lr\).*may change only"):
        fit(root, "--extend=true", "--trainer.max_epochs=3", "--model.init_args.lr=1e-2")
    fit(root, "--extend=true", "--trainer.max_epochs=3")  # train a finished run further, on purpose
    extended = json.loads((root / "results.json").read_text())
    assert extended["epochs"] == 3  # segments: the first run and the extension (the resume trained nothing)
    assert len(extended["wall_time_segments_s"]) == 2
    assert extended["initial"] == results["initial"] and len(fact_rows(root)) == 8 * 4
    assert json.loads((root / "run_config.json").read_text())["trainer"]["max_epochs"] == 3

    # overwrite deletes everything of the old run: a run that trains no epoch draws no curves
    fit(root, "--overwrite=true", "--trainer.max_epochs=0")
    assert json.loads((root / "results.json").read_text())["epochs"] == 0
    assert not (root / "curves.png").exists() and not (root / "curves.csv").exists()
    assert len(fact_rows(root)) == 8  # the initial evaluation only


def test_fast_dev_run_writes_nothing(tmp_path):
    root = tmp_path / "run"
    fit(root, "--trainer.fast_dev_run=true")
    assert not root.exists()


def test_refused_starts_are_one_line_and_leave_no_trace(tmp_path, capsys):
    root = tmp_path / "run"
    legacy = tmp_path / "legacy.yaml"
    config = yaml.safe_load(Path(DEMO).read_text())
    config["trainer"]["callbacks"][0] = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True},
    }
    legacy.write_text(yaml.safe_dump(config))
    cases = [
        (["--ckpt_path=last"], "holds no run to resume; drop --ckpt_path last"),
        (["--resume=true"], "holds no run to resume; drop --resume true"),
        (["--resume=true", "--overwrite=true"], "pass either --resume true (continue the run) or"),
        (["--ckpt_path=old/last.ckpt"], "resumes the run of its own folder only"),
        (["--extend=true"], "holds no finished run"),
        (["--ckpt_path=last", "--overwrite=true"], "not both"),
        ([f"--config={legacy}"], "replace it by class_path: memexp.checkpointing.RunCheckpoint"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", DEMO, f"--trainer.default_root_dir={root}", *QUICK, *extra])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and message in err and len(err.splitlines()) == 1, err
        assert err.startswith("memexp: error: ")
        assert not root.exists()  # no wandb folder, no files


def test_wandb_mode_wins_and_loggers_follow_the_run_folder(monkeypatch):
    from jsonargparse import Namespace

    from memexp.lightning_cli import apply_logging_rules

    def trainer_cfg():
        wandb = Namespace(
            class_path="lightning.pytorch.loggers.WandbLogger",
            init_args=Namespace(offline=True, save_dir="runs/demo"),
        )
        csv_logger = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir="x")
        )
        return Namespace(logger=[wandb, csv_logger])

    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = trainer_cfg()
    apply_logging_rules(cfg, "runs/mine")
    assert [lg.init_args.save_dir for lg in cfg.logger] == ["runs/mine", "runs/mine"]
    assert cfg.logger[0].init_args.offline is False
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = trainer_cfg()
    apply_logging_rules(cfg, "runs/mine")
    assert [lg.class_path.rsplit(".", 1)[-1] for lg in cfg.logger] == ["CSVLogger"]


def test_top_level_help_is_fast_and_fit_help_is_complete(capsys):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "memexp", "--help"], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    assert proc.returncode == 0 and "fit" in proc.stdout and "--extend true" in proc.stdout
    assert took < 3.0, f"memexp --help took {took:.1f} s"
    proc = subprocess.run([sys.executable, "-m", "memexp"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("memexp: error: choose a subcommand")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--ckpt_path" in out and "--extend" in out and "--overwrite" in out


def test_print_config_links_backbone_to_tokenizer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--model.init_args.backbone=tiny:gpt2", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["backbone"] == "tiny:gpt2"
    assert config["model"]["init_args"]["method"] == "full"
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")


def test_ddp_two_cpu_processes(tmp_path):
    """``--trainer.strategy=ddp --trainer.devices=2 --trainer.accelerator=cpu`` (gloo), as a user runs it."""
    root = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "memexp",
        "fit",
        "--config",
        DEMO,
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        *QUICK,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    assert results["world_size"] == 2 and results["status"] == "finished"
    assert results["global_step"] == 2  # 8 facts / (2 ranks x batch 4) = 1 step per epoch
    rows = fact_rows(root)
    for epoch in ("-1", "0", "1"):  # every fact evaluated exactly once per evaluation, across both ranks
        assert sorted(int(r["fact_id"]) for r in rows if r["epoch"] == epoch) == list(range(8))


def test_the_module_seed_is_the_data_seed(tmp_path):
    """One seed per run (different module and data seeds made Lightning refuse to log hyperparameters)."""
    from memexp.data import FactsDataModule
    from memexp.fact_tuning import FactTuning
    from memexp.lightning_cli import MemexpCLI

    args = ["--config", DEMO, "--model.init_args.seed=3", f"--trainer.default_root_dir={tmp_path}"]
    cli = MemexpCLI(FactTuning, FactsDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, args=args)  # fmt: skip
    assert cli.model.hparams.seed == cli.datamodule.hparams.seed == 3
