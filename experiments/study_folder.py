"""The run folder of a study (``results/<name>/<run>/``): the run-folder rule of :mod:`decoding.run_folder`.

A run folder holds ``run_config.json`` (the resolved settings), one sub-folder per cell and, once every
cell is done, ``results.json`` (its presence marks the run finished), CSV tables, PNG plots and
``report.md``. :func:`open_run_dir` applies the shared rule with the shared words: ``--resume true`` (or a
bare ``--resume``) continues an unfinished run with the same settings, ``--overwrite true`` deletes the
folder's run and starts again; other settings are refused naming the keys, and a refused start leaves no
trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decoding.errors import UserError
from decoding.run_folder import RunLayout, RunState
from memexp.fit_folder import RESULTS_FILE

STUDY_LAYOUT = RunLayout(  # the whole folder is the study's: any entry is a trace, starting again clears all
    results=RESULTS_FILE,
    traces=("*",),
    outputs=("*",),
    folder_flag="--output_root or --run",
    extend_hint="another --run name keeps both",
)


class RunFolderTaken(UserError, FileExistsError):
    """The folder holds a run this start may not touch (a FileExistsError too, as open_run_dir raised)."""


def check_run_dir(root: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> RunState:
    """Decide whether a run with ``config`` may start in ``root`` (UserError if not); writes nothing."""
    try:
        return STUDY_LAYOUT.check(root, config, resume=resume, overwrite=overwrite)
    except UserError as err:
        if STUDY_LAYOUT.started(root) and not (resume and overwrite):
            raise RunFolderTaken(str(err)) from None
        raise


def open_run_dir(root: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> Path:
    """Prepare ``root`` for a run with ``config`` after :func:`check_run_dir`; record the settings.

    With ``overwrite`` the old run is deleted; with ``resume`` its finished cells are kept.
    """
    return STUDY_LAYOUT.start(root, config, check_run_dir(root, config, resume, overwrite))
