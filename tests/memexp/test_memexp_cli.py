"""The ``memexp`` CLI on the demo config: results files, run-folder guard, resume, print_config, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
            f"--trainer.logger.init_args.save_dir={root}",
            *QUICK,
            *extra,
        ]
    )


def fact_rows(root: Path) -> list[dict]:
    with (root / "fact_evals.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_demo_config_writes_results_and_guards_the_run_folder(tmp_path, capsys):
    root = tmp_path / "run"
    fit(root)
    results = json.loads((root / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 2
    assert results["initial"]["val/hallucination_rate"] == 1.0
    assert 0.0 <= results["final"]["val/hallucination_rate"] <= 1.0
    assert results["final"]["val/answer_nll"] < results["initial"]["val/answer_nll"]
    assert Path(results["last_checkpoint"]).is_file() and Path(results["best_checkpoint"]).is_file()
    assert (root / "curves.png").stat().st_size > 1000
    from decoding.cli import main as decoding_main

    prompt = "Q: What is the code of the red fox?\nA:"
    decoding_main(
        ["generate", "--model", results["model_dir"], "--prompt", prompt, "--max_new_tokens", "3", "--json"]
    )
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]) <= 3
    rows = fact_rows(root)
    assert len(rows) == 8 * 3  # 8 facts x (initial + 2 epochs)
    assert {r["epoch"] for r in rows} == {"-1", "0", "1"}

    with pytest.raises(FileExistsError, match="already holds a finished run"):
        fit(root)
    (root / "results.json").unlink()
    with pytest.raises(FileExistsError, match="holds checkpoints of an unfinished run"):
        fit(root)
    fit(root, "--ckpt_path=last", "--trainer.max_epochs=3")  # resume the "unfinished" run for one more epoch
    assert json.loads((root / "results.json").read_text())["epochs"] == 3
    fit(root, "--overwrite=true")
    assert json.loads((root / "results.json").read_text())["epochs"] == 2
    assert len(fact_rows(root)) == 8 * 3  # overwrite removed the old records


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
