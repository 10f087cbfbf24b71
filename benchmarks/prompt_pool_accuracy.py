"""Split-Digits accuracy table: L2P against one baseline per family, 3 seeds, mean +- std.

Every method runs through the real CLI (``prompt-pool fit``) with the shipped configs:
``configs/prompt_pool/split_digits.yaml`` (L2P) alone or combined with
``configs/prompt_pool/baselines/*.yaml``.
The backbone is the tiny ViT pretrained by ``prompt_pool.pretrain`` on the digits reserved from the tasks.

    OMP_NUM_THREADS=1 python benchmarks/prompt_pool_accuracy.py [--seeds 0 1 2] [--out runs/prompt_pool/bench]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from prompt_pool.cli import main as cli_main

BASE = "configs/prompt_pool/split_digits.yaml"
METHODS = {
    "L2P": [],
    "L2P, prompt-mean head (paper)": ["--model.init_args.head_type", "prompt"],
    "Seq. fine-tuning (head only)": ["--config", "configs/prompt_pool/baselines/ft_head.yaml"],
    "Seq. fine-tuning (whole model)": ["--config", "configs/prompt_pool/baselines/ft_full.yaml"],
    "Frozen backbone + linear head (train_mask)": [
        "--config",
        "configs/prompt_pool/baselines/linear_frozen.yaml",
    ],
    "ER (10/class)": ["--config", "configs/prompt_pool/baselines/er.yaml"],
    "EWC": ["--config", "configs/prompt_pool/baselines/ewc.yaml"],
    "LwF": ["--config", "configs/prompt_pool/baselines/lwf.yaml"],
    "Joint (upper bound)": ["--config", "configs/prompt_pool/baselines/joint.yaml"],
}


def run(method: str, extra: list[str], seed: int, out: Path) -> dict:
    folder = out / f"{re.sub(r'[^A-Za-z0-9]+', '_', method).strip('_')}_s{seed}"
    if not (folder / "results.json").exists():
        resume = ["--runner.resume", "true"] if (folder / "run_config.json").exists() else []  # killed run
        cli_main(
            [
                "fit",
                "--config",
                BASE,
                *extra,
                "--runner.out_dir",
                str(folder),
                "--runner.seed",
                str(seed),
                "--model.init_args.seed",
                str(seed),
                "--trainer.logger",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                "--runner.plots",
                str(seed == 0).lower(),
                *resume,
            ]
        )
    return json.loads((folder / "results.json").read_text())["metrics"]


def fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/prompt_pool/bench_accuracy")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    a = p.parse_args()
    rows = []
    t0 = time.time()
    for name in a.methods:
        ms = [run(name, METHODS[name], s, Path(a.out)) for s in a.seeds]
        rows.append(
            (
                name,
                fmt([m["average_accuracy"] for m in ms]),
                fmt([m.get("forgetting", float("nan")) for m in ms]),
                fmt([m.get("backward_transfer", float("nan")) for m in ms]),
                fmt([m.get("forward_transfer", float("nan")) for m in ms]),
            )
        )
    print(f"\nSplit-Digits, 5 tasks x 2 classes, class-IL, seeds {a.seeds}, {time.time() - t0:.0f} s\n")
    print("| method | avg acc (%) | forgetting (max) | BWT | FWT |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
