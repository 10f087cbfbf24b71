"""Run folders and atomic writes, shared by every package (memexp, prompt_pool, experiments, decoding).

Atomic writes: every file or folder is written to a temporary sibling *in the destination folder* and
moved into place with one ``os.replace`` (never through ``$TMPDIR``, which may be another filesystem,
where a rename becomes a copy that a kill can cut short). A killed writer leaves the old file whole and,
at worst, a hidden ``.<name>.*.tmp`` sibling that :func:`remove_stale_temps` clears.

The run-folder rule (:func:`check_run_folder`), the same for every command:

- a folder holds one configuration, recorded in ``run_config.json`` when a run starts;
- a start with other settings is refused, naming the settings that differ, unless overwrite is asked;
- an identical rerun of a finished run is refused (overwrite starts it again);
- an identical unfinished run resumes only when resume is asked;
- a refused start leaves the folder exactly as it was.

One vocabulary everywhere: ``--resume true`` continues, ``--overwrite true`` deletes the old run and starts
again (``prompt-pool``: ``--runner.resume true`` / ``--runner.overwrite true``; the studies also take a bare
``--resume`` / ``--overwrite``; ``memexp fit`` also takes Lightning's ``--ckpt_path last``). A command
describes its folder once with a :class:`RunLayout` (what marks a finished or started run, what a run
writes) and gets the checks, the refusal messages and the clean start from it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

from decoding.errors import UserError

RUN_CONFIG_FILE = "run_config.json"
TMP_SUFFIX = ".tmp"
RESUME_FLAG = "--resume true"
OVERWRITE_FLAG = "--overwrite true"


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and replace ``path``.

    On any exception (or a kill) ``path`` keeps its old content; the temporary file is removed when
    Python gets the chance.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (the temporary file sits beside ``path``)."""
    import torch

    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_savefig(fig: Any, path: str | Path, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` atomically (a kill never leaves half an image); format from the suffix."""
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)


def atomic_write_dir(out: str | Path, fill: Callable[[Path], None], replace: bool = True) -> Path:
    """Build a folder with ``fill(tmp)`` in a temporary sibling, then move it to ``out`` in one step.

    An existing ``out`` is replaced only after the new folder is complete. With ``replace=False`` an
    existing non-empty ``out`` is left alone and ``OSError`` raised (a concurrent writer got there first).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent))
    try:
        fill(tmp)
        if out.exists() and replace:
            old = out.with_name(f".{out.name}.old{TMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files and folders a killed writer left in ``folder`` (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(f".*{TMP_SUFFIX}") if p.name.startswith(".")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; values are made JSON-comparable (tuples become lists)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.loads(json.dumps(value, default=str))
    return flat


def differing_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted names of the settings that differ between two (nested) configurations."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


class RunState(Enum):
    """What a run folder holds, as :func:`check_run_folder` decides it."""

    NEW = "new"  # nothing: start
    RESUME = "resume"  # an unfinished run with the same settings, resume asked: continue it


def read_run_config(root: str | Path) -> dict[str, Any] | None:
    """The settings recorded in ``root``, or None when no run was started there."""
    path = Path(root) / RUN_CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def check_run_folder(
    root: str | Path,
    config: Mapping[str, Any],
    *,
    finished: bool,
    started: bool,
    resume: bool,
    overwrite: bool,
    resume_flag: str = RESUME_FLAG,
    overwrite_flag: str = OVERWRITE_FLAG,
    extend_hint: str = "",
) -> RunState:
    """Apply the run-folder rule to ``root``; raise :class:`UserError` for a refused start.

    Nothing is written or deleted here: the caller removes the old run (overwrite) and records the new
    settings with :func:`record_run_config` once every setting has been validated.

    Args:
        root: the run folder.
        config: the settings of the requested run (nested mappings are compared key by key).
        finished: whether ``root`` holds a finished run (its results file exists).
        started: whether ``root`` holds any trace of a run (checkpoints, partial results).
        resume: whether the user asked to resume.
        overwrite: whether the user asked to delete the old run and start again.
        resume_flag: how the user asks to resume, for the messages (:data:`RESUME_FLAG` by default).
        overwrite_flag: how the user asks to start again (:data:`OVERWRITE_FLAG` by default).
        extend_hint: how to extend a finished run on purpose, appended to the finished-run refusal.

    Returns:
        ``RunState.NEW`` to start (after deleting the old run when ``overwrite``), ``RunState.RESUME``.
    """
    root = Path(root)
    if resume and overwrite:
        raise UserError(
            f"pass either {resume_flag} (continue the run) or {overwrite_flag} (start again), not both"
        )
    old = read_run_config(root)
    if overwrite:
        return RunState.NEW
    if old is not None:
        changed = differing_settings(old, config)
        if changed:
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise UserError(
                f"{root} holds a run with other settings ({shown}); choose another run folder, or pass "
                f"{overwrite_flag} to delete it and start again"
            )
    if finished:
        extend = f"; {extend_hint}" if extend_hint else ""
        raise UserError(
            f"{root} already holds a finished run with these settings; pass {overwrite_flag} to delete it "
            f"and start again, or choose another run folder{extend}"
        )
    if started or old is not None:
        if resume:
            return RunState.RESUME
        raise UserError(
            f"{root} holds an unfinished run with these settings; pass {resume_flag} to continue it, or "
            f"{overwrite_flag} to delete it and start again"
        )
    if resume:
        raise UserError(f"{root} holds no run to resume; drop {resume_flag} to start one")
    return RunState.NEW


def record_run_config(root: str | Path, config: Mapping[str, Any]) -> None:
    """Record the settings of the run that starts in ``root`` (atomically)."""
    atomic_write_json(Path(root) / RUN_CONFIG_FILE, dict(config))


def remove_paths(root: str | Path, patterns: Iterable[str]) -> None:
    """Delete the files and folders of ``root`` that match any of ``patterns`` (globs, not recursive)."""
    root = Path(root)
    for pattern in patterns:
        for path in list(root.glob(pattern)):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunLayout:
    """What one command writes into its run folder, and how its user asks to resume or start again.

    Attributes:
        results: the file whose presence marks a finished run.
        traces: globs whose match marks a started run (``run_config.json`` always does).
        outputs: globs of what a run writes; starting again deletes these and nothing else.
        folder_flag: the flag that names the run folder, for the messages.
        resume_flag: how to resume, for the messages.
        overwrite_flag: how to start again, for the messages.
        extend_hint: appended to the refusal of a finished run (how to extend it on purpose).
    """

    results: str
    traces: tuple[str, ...]
    outputs: tuple[str, ...]
    folder_flag: str
    resume_flag: str = RESUME_FLAG
    overwrite_flag: str = OVERWRITE_FLAG
    extend_hint: str = ""

    def finished(self, root: str | Path) -> bool:
        """Whether ``root`` holds a finished run."""
        return (Path(root) / self.results).is_file()

    def started(self, root: str | Path) -> bool:
        """Whether ``root`` holds any trace of a run."""
        root = Path(root)
        return root.is_dir() and any(next(root.glob(p), None) is not None for p in self.traces)

    def check(
        self, root: str | Path, config: Mapping[str, Any], *, resume: bool, overwrite: bool
    ) -> RunState:
        """:func:`check_run_folder` for this layout; writes nothing.

        Raises:
            UserError: ``root`` is a file, or the start is refused (see :func:`check_run_folder`).
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise UserError(f"{root} is a file, not a run folder; pass another {self.folder_flag}")
        return check_run_folder(
            root,
            config,
            finished=self.finished(root),
            started=self.started(root),
            resume=resume,
            overwrite=overwrite,
            resume_flag=self.resume_flag,
            overwrite_flag=self.overwrite_flag,
            extend_hint=self.extend_hint,
        )

    def clear(self, root: str | Path) -> None:
        """Delete what a run wrote into ``root`` (:attr:`outputs`), nothing else the folder holds."""
        remove_paths(root, self.outputs)

    def start(self, root: str | Path, config: Mapping[str, Any], state: RunState) -> Path:
        """Prepare ``root`` after an accepted :meth:`check`: create it, drop stale temporary files, clear
        the old run for a new start (``RunState.NEW``), record ``config``."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)
        if state is RunState.NEW:
            self.clear(root)
        record_run_config(root, config)
        return root
