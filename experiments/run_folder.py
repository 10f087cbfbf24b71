"""Run folders of the studies (``results/<name>/<run>/``), the study command line and markdown tables.

A run folder holds ``config.json`` (the resolved settings), one sub-folder per cell and, once every
cell is done, ``results.json`` (its presence marks the run finished), CSV tables, PNG plots and
``report.md``. :func:`open_run_dir` refuses a folder that holds a run unless ``--resume`` (continue
it with the same settings) or ``--overwrite`` (delete it and start again) is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memexp.run_dir import RESULTS_FILE, atomic_write_json

CONFIG_FILE = "config.json"


def open_run_dir(root: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> Path:
    """Prepare ``root`` for a run with ``config``.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together, or a resumed run whose settings differ.
        FileExistsError: ``root`` holds a finished or unfinished run and neither flag is given.
    """
    if resume and overwrite:
        raise ValueError("pass either --resume (continue the run) or --overwrite (start again), not both")
    started = (root / CONFIG_FILE).exists()
    if overwrite and root.exists():
        shutil.rmtree(root)
    elif started and not resume:
        what = "a finished run" if (root / RESULTS_FILE).exists() else "an unfinished run"
        raise FileExistsError(
            f"{root} holds {what}; pass --resume to continue it (finished cells are kept), "
            "--overwrite to delete it and start again, or choose another --run name"
        )
    elif started:
        old = json.loads((root / CONFIG_FILE).read_text())
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if changed:
            raise ValueError(
                f"{root} was started with other settings ({', '.join(changed)}); resume with the same "
                "config, or pass --overwrite to start again"
            )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / CONFIG_FILE, config)
    return root


def apply_quick(config: Any, quick: bool) -> Any:
    """Return ``config`` with its ``quick_settings`` applied (dotted keys reach nested dataclasses)."""
    if not quick:
        return config
    for key, value in config.quick_settings.items():
        *path, name = key.split(".")
        target = config
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, name):
            raise ValueError(f"quick override {key!r} names no setting of {type(target).__name__}")
        setattr(target, name, value)
    return config


def config_dict(config: Any) -> dict[str, Any]:
    """The settings of a dataclass config as JSON-ready data (without the quick overrides)."""
    data = dataclasses.asdict(config)
    data.pop("quick_settings", None)
    return data


def parse_study_args(config_cls: type, args: Sequence[str] | None, description: str) -> tuple[Any, Any]:
    """Parse ``--config FILE [--quick] [--resume] [--overwrite] [--<field> value]`` into ``config_cls``."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    parser = ArgumentParser(description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the settings below")
    parser.add_class_arguments(config_cls, as_group=False)
    for flag, text in (
        ("quick", "apply the config's quick_settings (a run of minutes on a 2-core CPU)"),
        ("resume", "continue the run in the run folder (finished cells are kept)"),
        ("overwrite", "delete the run folder and start again"),
    ):
        parser.add_argument(f"--{flag}", action=ActionYesNo, default=False, help=text)
    ns = parser.parse_args(args)
    flags = {k: ns.pop(k) for k in ("quick", "resume", "overwrite")}
    ns.pop("config", None)
    config = parser.instantiate_classes(ns)
    return config_cls(**{f.name: config[f.name] for f in dataclasses.fields(config_cls)}), flags


def wandb_logger(enabled: bool, save_dir: Path, project: str, name: str, group: str):
    """An offline-by-default Lightning ``WandbLogger``, or False when disabled."""
    if not enabled:
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=project, name=name, group=group, save_dir=str(save_dir), offline=True)


def finish_wandb(logger: Any) -> None:
    """Close the wandb run of ``logger`` so that the next cell starts its own."""
    if logger:
        import wandb

        wandb.finish()


def log_summary_to_wandb(
    enabled: bool, save_dir: Path, project: str, name: str, images: list[Path], tables: dict
):
    """Log the study's plots and tables as one offline wandb run."""
    if not enabled:
        return
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")  # offline unless the environment says otherwise
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
