"""Seed spread of a ``memexp fit`` demo: first epoch at 0% hallucination and final metrics, mean ± sd.

Seed ``s`` sets ``--seed_everything`` (initialisation) and ``--model.init_args.seed`` (dropout, and through
the CLI's link the data seed: which random facts, the held-out split and the batch order).

Runs the shipped config once per seed through the real CLI, each in its own run folder, and prints one
JSON summary with the package versions, the CPU path and the sha256 of the offline backbone, so that a
table built from it says what produced it.

    python benchmarks/seed_spread.py --config configs/memexp/demo.yaml --seeds 0 1 2 --out runs/spread/demo
    python benchmarks/seed_spread.py --config configs/memexp/mome_demo.yaml --out runs/spread/mome
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from decoding.provenance import environment, file_sha256


def backbone_sha(config: str) -> tuple[str, str]:
    """The backbone name of ``config`` and the sha256 of its weights (building it if needed)."""
    from decoding.models import resolve_model_path

    name = yaml.safe_load(Path(config).read_text())["model"]["init_args"]["backbone"]
    return name, file_sha256(Path(resolve_model_path(name)) / "model.safetensors")


def run_seed(config: str, seed: int, out: Path) -> dict:
    """One ``memexp fit`` run; returns its ``results.json`` plus the command's wall time."""
    folder = out / f"seed{seed}"
    results = folder / "results.json"
    if not results.exists():  # a finished seed is read back, not re-run
        cmd = [
            sys.executable,
            "-m",
            "memexp",
            "fit",
            "--config",
            config,
            f"--seed_everything={seed}",
            f"--model.init_args.seed={seed}",
            f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}",
            "--trainer.enable_progress_bar=false",
        ]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        (folder / "wall_s.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    data = json.loads(results.read_text())
    wall = folder / "wall_s.txt"
    data["command_wall_s"] = float(wall.read_text()) if wall.exists() else None
    return data


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (sd 0 for one value)."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    name, sha = backbone_sha(a.config)
    runs = {s: run_seed(a.config, s, a.out) for s in a.seeds}
    first_zero = [r["first_zero_hallucination_epoch"] for r in runs.values()]
    reached = [e for e in first_zero if e is not None]
    summary = {
        "config": a.config,
        "backbone": name,
        "backbone_sha256": sha,
        "environment": environment(),
        "seeds": a.seeds,
        "first_zero_epoch_per_seed": first_zero,
        "first_zero_epoch": mean_sd([e + 1 for e in reached]) if reached else None,  # epochs trained
        "final": {
            k: mean_sd([r["final"][k] for r in runs.values() if k in r["final"]])
            for k in sorted({k for r in runs.values() for k in r["final"]})
        },
        "command_wall_s": [r["command_wall_s"] for r in runs.values()],
    }
    print(json.dumps(summary, indent=2))
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
