"""The run folder of ``memexp fit``: one configuration per folder (:mod:`decoding.run_folder`'s rule).

``<trainer.default_root_dir>`` holds ``run_config.json`` (the settings that change results, recorded at the
start), ``checkpoints/last.ckpt`` (+ ``best.ckpt``), ``fact_evals.csv``, and once the run is finished
``results.json``, ``curves.csv``, ``curves.png`` and the exported model. :func:`open_fit_folder` decides:

- a new folder starts; a folder with other settings is refused, naming them, unless ``--overwrite true``;
- an identical finished run is refused (``--overwrite true`` starts it again, ``--extend true`` trains on);
- an identical unfinished run resumes only with ``--resume true`` (or Lightning's ``--ckpt_path last``);
- ``--extend true`` continues a finished run from its ``last.ckpt`` with a larger budget
  (only ``trainer.max_epochs`` / ``max_steps`` / ``max_time`` may change; the results are rewritten).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from decoding.errors import UserError
from decoding.run_folder import (
    OVERWRITE_FLAG,
    RUN_CONFIG_FILE,
    RunLayout,
    RunState,
    differing_settings,
    read_run_config,
)

RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
CKPT_LAST_FLAG = "--ckpt_path last"  # Lightning's spelling of --resume true
EXTEND_FLAG = "--extend true"
EXTEND_HINT = (
    f"to train a finished run further on purpose, pass {EXTEND_FLAG} with a larger --trainer.max_epochs "
    "(it continues from checkpoints/last.ckpt and rewrites the results)"
)
# settings that do not change results: left out of run_config.json and of the comparison
NOT_RESULTS = (
    "config",
    "ckpt_path",
    "resume",
    "overwrite",
    "extend",
    "print_config",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
)
EXTENDABLE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")
FIT_LAYOUT = RunLayout(
    results=RESULTS_FILE,
    traces=(RUN_CONFIG_FILE, CHECKPOINT_DIR, "fact_evals.csv"),
    # what a run writes into its folder; --overwrite removes these (and nothing else the user keeps there)
    outputs=(RESULTS_FILE, RUN_CONFIG_FILE, "config.yaml", "fact_evals.csv", "curves.csv", "*.png")
    + (CHECKPOINT_DIR, "model", "mome", "wandb", "lightning_logs"),
    folder_flag="--trainer.default_root_dir",
    extend_hint=EXTEND_HINT,
)


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the settings that do not change results (:data:`NOT_RESULTS`)."""

    def keep(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in NOT_RESULTS or name.startswith("__"):
                continue
            out[key] = keep(value, f"{name}.") if isinstance(value, Mapping) else value
        return out

    return keep(config, "")


def open_fit_folder(
    root: str | Path,
    settings: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    extend: bool,
    resume_flag: str = FIT_LAYOUT.resume_flag,
) -> RunState:
    """Apply the run-folder rule for a ``fit`` with ``settings`` into ``root``; nothing is written here.

    ``resume_flag`` is how the user asked to resume (``--resume true`` or ``--ckpt_path last``), for the
    messages.

    Returns:
        ``RunState.NEW`` (start; with ``overwrite`` the caller clears the folder with ``FIT_LAYOUT.clear``)
        or ``RunState.RESUME`` (continue from ``last.ckpt``: a resumed unfinished run, or an extension).

    Raises:
        UserError: the start is refused; the message names the differing settings and the flags.
    """
    root = Path(root)
    if extend:
        return _check_extend(root, settings, resume=resume, overwrite=overwrite)
    old = read_run_config(root)
    if old is not None and FIT_LAYOUT.finished(root) and not overwrite:
        changed = differing_settings(old, settings)
        if changed and set(changed) <= set(EXTENDABLE):
            raise UserError(
                f"{root} holds a finished run with other settings ({', '.join(changed)}); pass "
                f"{OVERWRITE_FLAG} to delete it and start again, or {EXTEND_FLAG} to train it further"
            )
    layout = dataclasses.replace(FIT_LAYOUT, resume_flag=resume_flag)
    return layout.check(root, settings, resume=resume, overwrite=overwrite)


def _check_extend(root: Path, settings: Mapping[str, Any], *, resume: bool, overwrite: bool) -> RunState:
    if overwrite:
        raise UserError(f"pass either {EXTEND_FLAG} (train on) or {OVERWRITE_FLAG} (start again), not both")
    if not FIT_LAYOUT.finished(root) or not (root / CHECKPOINT_DIR / "last.ckpt").is_file():
        hint = (
            f"resume it with {FIT_LAYOUT.resume_flag}"
            if FIT_LAYOUT.started(root)
            else f"drop {EXTEND_FLAG} to start one"
        )
        raise UserError(f"{root} holds no finished run (with checkpoints/last.ckpt) to extend; {hint}")
    old = read_run_config(root) or {}
    changed = [k for k in differing_settings(old, settings) if k not in EXTENDABLE]
    if changed:
        raise UserError(
            f"{root} holds a run with other settings ({', '.join(changed[:8])}); {EXTEND_FLAG} may change "
            f"only {', '.join(EXTENDABLE)}: use the run's settings, or choose another run folder"
        )
    return RunState.RESUME
