"""What a study reports besides its files: wandb runs (one per cell, one summary) and markdown tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from decoding.run_folder import atomic_write_json, atomic_write_text
from memexp.fit_folder import RESULTS_FILE

WANDB_PROJECT = "memexp-experiments"


def wandb_mode() -> str:
    """``$WANDB_MODE`` (online, offline, disabled...), offline when unset."""
    return os.environ.get("WANDB_MODE", "").strip() or "offline"


def wandb_logger(enabled: bool, save_dir: Path, project: str, name: str, group: str):
    """A Lightning ``WandbLogger`` writing under ``save_dir`` in :func:`wandb_mode`, or False.

    False when disabled in the config or by ``WANDB_MODE=disabled`` (then nothing is written).
    """
    mode = wandb_mode()
    if not enabled or mode == "disabled":
        return False
    from lightning.pytorch.loggers import WandbLogger

    save_dir.mkdir(parents=True, exist_ok=True)
    # offline=False: Lightning's offline=True would overwrite $WANDB_MODE for the whole process
    return WandbLogger(project=project, name=name, group=group, save_dir=str(save_dir), mode=mode)


def finish_wandb(logger: Any) -> None:
    """Close the wandb run of ``logger`` so that the next cell starts its own."""
    if logger:
        import wandb

        wandb.finish()


def log_summary_to_wandb(
    enabled: bool, save_dir: Path, project: str, name: str, images: list[Path], tables: dict
):
    """Log the study's plots and tables as one wandb run (in :func:`wandb_mode`) under ``save_dir``."""
    mode = wandb_mode()
    if not enabled or mode == "disabled":
        return
    import wandb

    run = wandb.init(project=project, name=name, dir=str(save_dir), mode=mode, reinit="finish_previous")
    run.log({p.stem: wandb.Image(str(p)) for p in images})
    for key, rows in tables.items():
        if rows:
            columns = list(rows[0])
            run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
    run.finish()


def markdown_table(rows: list[dict[str, Any]], columns: list[str], digits: int = 3) -> str:
    """Render dict rows as a GitHub markdown table (floats rounded, None as an en dash)."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def finish_study(
    root: Path,
    report: list[str],
    results: dict[str, Any],
    *,
    wandb: bool,
    summary_run: str,
    images: list[Path],
    tables: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Write ``report.md``, log the wandb summary run, then ``results.json`` (last: it marks the run
    finished); return the results with ``status: finished``."""
    atomic_write_text(root / "report.md", "\n".join(report))
    log_summary_to_wandb(wandb, root, WANDB_PROJECT, summary_run, images, tables)
    results = {"status": "finished", **results}
    atomic_write_json(root / RESULTS_FILE, results)
    return results
