"""Bad input to ``prompt-pool fit``: exit code != 0, one stderr line naming the value, no traceback, nothing
written (neither the run folder nor anything the input points at runs code)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from decoding.errors import UserError
from prompt_pool.cli import main

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs" / "prompt_pool"


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _files(tmp: Path) -> None:
    """Inputs the cases point at: a garbage checkpoint, a crafted CIFAR-100 folder, a plain file."""
    (tmp / "garbage.safetensors").write_bytes(b"definitely not a tensor file")
    (tmp / "a_file").write_text("x")
    base = tmp / "crafted" / "cifar-100-python"
    base.mkdir(parents=True)
    for split in ("train", "test"):
        d = {
            "data": np.zeros((4, 3072), np.uint8),
            "fine_labels": [0, 1, 2, 3],
            "x": _RunsCode(str(tmp / "ran")),
        }
        (base / split).write_bytes(pickle.dumps(d))
    (tmp / "core").mkdir()


# (extra arguments (TMP = the test's folder), expected exit code, regex the one line must match)
CASES = [
    (["--model.init_args.pool.pool_size", "0"], 1, r"pool_size must be >= 1, got 0"),
    (["--model.init_args.pool.top_n", "0"], 1, r"top_n must be >= 1, got 0"),
    (["--model.init_args.pool.top_n", "11"], 1, r"pool_size 10 < top_n 11"),
    (["--model.init_args.pool.prompt_length", "0"], 1, r"prompt_length must be >= 1, got 0"),
    (["--model.init_args.lr", "0"], 1, r"lr=0\.0 is invalid.*--model\.init_args\.lr"),
    (["--model.init_args.lr", "nan"], 2, r"Parser key \"lr\": Expected a <class 'float'>\. Got value: nan"),
    (["--model.init_args.pull_coef", "-1"], 1, r"pull_coef must be >= 0, got -1"),
    (["--model.init_args.weight_decay", "-0.1"], 1, r"weight_decay=-0\.1 is invalid"),
    (["--model.init_args.betas", "[0.9, 1.5]"], 1, r"betas=\(0\.9, 1\.5\) is invalid"),
    (
        ["--config", str(CFG / "baselines" / "er.yaml"), "--trainer.callbacks.init_args.per_class", "0"],
        1,
        r"Replay per_class=0 is invalid",
    ),
    (["--model.init_args.backbone", "resnet18"], 1, r"backbone 'resnet18' is not a timm ViT"),
    (["--model.init_args.checkpoint", "TMP/missing.safetensors"], 1, r"missing\.safetensors' does not exist"),
    (["--model.init_args.checkpoint", "TMP/garbage.safetensors"], 1, r"cannot read ViT checkpoint"),
    (
        [
            "--model.init_args.checkpoint",
            "TMP/garbage.safetensors",
            "--model.init_args.checkpoint_sha256",
            "0" * 64,
        ],
        1,
        r"does not match the pinned sha256 0{64}",
    ),
    (["--model.init_args.poolsize", "3"], 2, r"L2P: Option 'poolsize' is not accepted \(see --help\)"),
    (
        ["--model.init_args.pool.top_n", "x"],
        2,
        r"Parser key \"pool\.top_n\": Expected a <class 'int'>\. Got value: x",
    ),
    (["--trainer.max_epochs", "0"], 1, r"trainer\.max_epochs=0 is invalid"),
    (["--trainer.max_epochs", "-1"], 1, r"trainer\.max_epochs=-1 is invalid"),
    (["--data.dataset", "imagenet"], 1, r"unknown data\.dataset 'imagenet'; use one of digits, synthetic"),
    (
        ["--data.dataset", "cifar100"],
        1,
        r"data\.dataset 'cifar100' reads a local folder: pass --data\.source\.root",
    ),
    (
        ["--data.dataset", "cifar100", "--data.source.root", "TMP/nope"],
        1,
        r"data\.source\.root '.*nope' is not a folder",
    ),
    (
        ["--data.dataset", "cifar100", "--data.source.root", "TMP/crafted"],
        1,
        r"refused to read .*names posix\.system",
    ),
    (
        ["--data.dataset", "core50", "--data.source.root", "TMP/core"],
        1,
        r"data\.split\.setting 'class' does not fit core50",
    ),
    (
        ["--data.split.num_tasks", "3"],
        1,
        r"data\.split\.num_tasks 3 does not split the 4 classes.*\[1, 2, 4\]",
    ),
    (["--data.split.num_tasks", "0"], 1, r"data\.split\.num_tasks must be >= 1, got 0"),
    (["--data.loader.batch_size", "0"], 1, r"data\.loader\.batch_size must be >= 1, got 0"),
    (["--data.split.task_classes", "[[0, 1], [1, 2]]"], 1, r"tasks 0 and 1 overlap on class 1"),
    (["--data.split.task_classes", "[[0, 9]]"], 1, r"task 0 names classes \[9\] that the data set lacks"),
    (["--data.images.image_size", "16"], 1, r"data and model do not fit: images of shape \(1, 1, 16, 16\)"),
    (["--runner.seed", "-1"], 1, r"runner\.seed must be in \[0, 2147483647\], got -1"),
    (
        ["--runner.out_dir", "TMP/a_file"],
        1,
        r"a_file is a file, not a run folder; pass another --runner\.out_dir",
    ),
    (["--runner.resume", "true"], 1, r"holds no run to resume; drop --runner\.resume true"),
    (
        ["--runner.resume", "true", "--runner.overwrite", "true"],
        1,
        r"either --runner\.resume true .* not both",
    ),
    (["--ckpt_path", "last"], 2, r"ckpt_path"),
    (["--config", "TMP/missing.yaml"], 2, r"missing\.yaml"),
    (
        ["--config", str(CFG / "baselines" / "ewc.yaml"), "--trainer.callbacks.init_args.ewc_lambda", "-1"],
        1,
        r"ewc_lambda=-1",
    ),
    (
        ["--model.init_args.eval_heads", '["nucleus"]'],
        1,
        r"eval_heads entry 'nucleus' is not a decoding head",
    ),
    (["--model.init_args.eval_heads", '["dola:dola_layers=7"]'], 1, r"dola_layers \[7\] are out of range"),
    (["--model.init_args.eval_heads", '["sled"]'], 1, r"evolution_scale=10 exceeds the 4 classes"),
    (
        [
            "--config",
            str(CFG / "baselines" / "ft_head.yaml"),
            "--model.init_args.eval_heads",
            '["dera:lam=2"]',
        ],
        1,
        r"DeRa needs a reference model and FineTune has none",
    ),
]


@pytest.mark.parametrize("extra,code,message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_ends_with_one_line_and_writes_nothing(tmp_path, capsys, base_args, extra, code, message):
    _files(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(base_args(out) + [a.replace("TMP", str(tmp_path)) for a in extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == code, err
    assert len(lines) == 1 and lines[0].startswith("prompt-pool: error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert (
        sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    )  # nothing written, no code ran


def test_the_console_command_prints_one_line_and_debug_raises(tmp_path, base_args):
    """Through a real process: the exit status and the whole stderr; ``--debug`` lets the error through."""
    _files(tmp_path)
    args = base_args(tmp_path / "run") + [
        "--data.dataset",
        "cifar100",
        "--data.source.root",
        str(tmp_path / "crafted"),
    ]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "prompt_pool.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "refused to read" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(UserError, match="refused to read"):
        main([*args, "--debug"])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "run").exists()
