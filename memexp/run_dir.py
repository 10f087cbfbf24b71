"""Run folders: refuse to clobber a finished or unfinished run; write result files atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


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
