"""Run folders of the studies (``results/<name>/<run>/``), the study command line, wandb and markdown tables.

A run folder holds ``run_config.json`` (the resolved settings), one sub-folder per cell and, once every
cell is done, ``results.json`` (its presence marks the run finished), CSV tables, PNG plots and
``report.md``. :func:`open_run_dir` applies the run-folder rule of :mod:`decoding.run_folder` with the
studies' flags: ``--resume`` continues an unfinished run with the same settings, ``--overwrite`` deletes
the folder and starts again; other settings are refused naming the keys, and a refused start leaves no
trace.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decoding.errors import UserError, concise_parser_errors
from decoding.run_folder import (
    RunState,
    check_run_folder,
    read_run_config,
    record_run_config,
    remove_stale_temps,
)
from memexp.run_dir import RESULTS_FILE

STUDY_FLAGS = ("quick", "resume", "overwrite")


class RunFolderTaken(UserError, FileExistsError):
    """The folder holds a run this start may not touch (a FileExistsError too, as open_run_dir raised)."""


def check_run_dir(root: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> RunState:
    """Decide whether a run with ``config`` may start in ``root`` (UserError if not); writes nothing."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file, not a run folder; choose another --output_root or --run")
    started = root.is_dir() and any(root.iterdir())
    try:
        return check_run_folder(
            root,
            config,
            finished=(root / RESULTS_FILE).exists(),
            started=started,
            resume=resume,
            overwrite=overwrite,
            resume_flag="--resume",
            overwrite_flag="--overwrite",
            extend_hint="another --run name keeps both",
        )
    except UserError as err:
        if started and not (resume and overwrite):
            raise RunFolderTaken(str(err)) from None
        raise


def open_run_dir(root: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> Path:
    """Prepare ``root`` for a run with ``config`` after :func:`check_run_dir`; record the settings.

    With ``overwrite`` the old folder is deleted; with ``resume`` its finished cells are kept.
    """
    check_run_dir(root, config, resume, overwrite)
    if overwrite and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    if read_run_config(root) is None:
        record_run_config(root, config)
    return root


def explicit_keys(args: Sequence[str]) -> set[str]:
    """The dotted settings named on the command line (``--train.max_epochs 3`` -> ``train.max_epochs``)."""
    keys = {a[2:].split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}
    return keys - {"config", *STUDY_FLAGS}


def apply_quick(config: Any, quick: bool, keep: set[str] | frozenset[str] = frozenset()) -> Any:
    """Return ``config`` with its ``quick_settings`` applied, except the settings in ``keep``.

    Dotted keys reach nested dataclasses; a key in ``keep`` (or under one, e.g. ``train`` keeps
    ``train.max_epochs``) was set on the command line and wins over ``--quick``.
    """
    if not quick:
        return config
    for key, value in config.quick_settings.items():
        parts = key.split(".")
        if any(".".join(parts[:i]) in keep for i in range(1, len(parts) + 1)):
            continue
        *path, name = parts
        target = config
        for part in path:
            target = getattr(target, part, None)
        if target is None or not hasattr(target, name):
            owner = type(target).__name__ if target is not None else key
            raise UserError(
                f"quick_settings key {key!r} names no setting of {owner}; fix or remove it in the config file"
            )
        setattr(target, name, value)
    return config


def config_dict(config: Any) -> dict[str, Any]:
    """The settings of a dataclass config as JSON-ready data (without the quick overrides)."""
    data = dataclasses.asdict(config)
    data.pop("quick_settings", None)
    return data


def parse_study_args(
    config_cls: type, args: Sequence[str] | None, description: str, prog: str
) -> tuple[Any, dict[str, Any]]:
    """Parse ``--config FILE [--quick] [--resume] [--overwrite] [--<field> value]`` into ``config_cls``.

    ``--quick`` fills in the config's ``quick_settings`` except the settings given on the command line.
    Parse errors end with one line (exit 2).
    """
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    parser = concise_parser_errors(ArgumentParser(prog=prog, description=description), prog=prog)
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
    cfg = config_cls(**{f.name: config[f.name] for f in dataclasses.fields(config_cls)})
    apply_quick(cfg, flags["quick"], explicit_keys(sys.argv[1:] if args is None else args))
    return cfg, flags


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
