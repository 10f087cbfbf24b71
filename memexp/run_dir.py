"""Run folders: refuse to clobber a finished or unfinished run; write result files atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from decoding.run_folder import atomic_write_json, atomic_write_text  # noqa: F401 - re-exported

RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"


def guard_run_dir(root: str | Path, resume: bool, overwrite: bool) -> None:
    """Check that training may write into ``root``.

    A folder holding a finished run (``results.json``) or checkpoints of an unfinished one is refused
    unless the run is resumed (``--ckpt_path``) or ``--overwrite true`` is given; with overwrite, the
    old results and checkpoints are removed first.
    """
    root = Path(root)
    results, ckpts = root / RESULTS_FILE, root / CHECKPOINT_DIR
    has_ckpts = ckpts.is_dir() and any(ckpts.iterdir())
    if overwrite:
        results.unlink(missing_ok=True)
        shutil.rmtree(ckpts, ignore_errors=True)
        for export in ("model", "mome"):
            shutil.rmtree(root / export, ignore_errors=True)
        for stale in root.glob("*.csv"):
            stale.unlink()
        return
    if resume:
        return
    if results.exists():
        raise FileExistsError(
            f"{root} already holds a finished run ({RESULTS_FILE}); choose another "
            "--trainer.default_root_dir, resume it with --ckpt_path last, or pass --overwrite true"
        )
    if has_ckpts:
        raise FileExistsError(
            f"{root} holds checkpoints of an unfinished run; resume it with --ckpt_path last, "
            "or pass --overwrite true to start again"
        )
