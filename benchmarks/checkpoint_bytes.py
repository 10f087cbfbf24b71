"""Checkpoint bytes written per epoch by ``memexp fit``: every write of ``last.ckpt`` and ``best.ckpt``.

Run (a few minutes on 2 CPU cores; each config trains a few epochs in a temporary run folder)::

    WANDB_MODE=disabled python benchmarks/checkpoint_bytes.py \\
        configs/memexp/mome_demo.yaml:4 configs/memexp/demo.yaml:10 configs/memexp/demo_lora.yaml:10

Each argument is ``CONFIG:EPOCHS`` (``--trainer.max_epochs``). The writer of
:class:`memexp.checkpointing.RunCheckpoint` is wrapped, so the count is exact; the code under test is
whatever ``memexp`` is imported (``PYTHONPATH``), so the same script measures two versions.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import memexp.checkpointing as checkpointing
from memexp.lightning_cli import run_lightning_cli


def measure(config: str, epochs: int) -> dict:
    writes: list[tuple[str, int, int]] = []
    original = checkpointing.atomic_torch_save

    def save(obj, path):
        original(obj, path)
        writes.append((os.path.basename(path), os.path.getsize(path), obj["epoch"]))

    checkpointing.atomic_torch_save = save
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_lightning_cli(
                [
                    "fit",
                    "--config",
                    config,
                    f"--trainer.max_epochs={epochs}",
                    f"--trainer.default_root_dir={tmp}/run",
                    "--trainer.enable_progress_bar=false",
                ]
            )
            folder = sum(f.stat().st_size for f in os.scandir(f"{tmp}/run/checkpoints"))
    finally:
        checkpointing.atomic_torch_save = original
    size = {
        name: max((b for n, b, _ in writes if n == name), default=0) for name in ("last.ckpt", "best.ckpt")
    }
    count = {name: sum(1 for n, _, _ in writes if n == name) for name in ("last.ckpt", "best.ckpt")}
    total = sum(b for _, b, _ in writes)
    return {"size": size, "count": count, "total": total, "per_epoch": total / epochs, "folder": folder}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="CONFIG:EPOCHS")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        config, epochs = run.rsplit(":", 1)
        rows.append((config, int(epochs), measure(config, int(epochs))))
    print("| config | epochs | last.ckpt MB (writes) | best.ckpt MB (writes) | MB written | MB per epoch |")
    print("|---|---|---|---|---|---|")
    for config, epochs, r in rows:
        last, best = (f"{r['size'][n] / 1e6:.1f} ({r['count'][n]})" for n in ("last.ckpt", "best.ckpt"))
        print(
            f"| {config} | {epochs} | {last} | {best} | {r['total'] / 1e6:.1f} | {r['per_epoch'] / 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
