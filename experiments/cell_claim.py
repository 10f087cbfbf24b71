"""Several study processes on one run folder share out its cells: each cell is trained by one process.

A process claims a cell by creating ``<cell>/claim.pid`` exclusively (``O_EXCL``) with its process id, and
removes it when the cell ends. A claim whose process no longer runs (killed) is stale and is taken over:
the cell resumes from its checkpoint. Start a study, then (once its run folder exists) the same command with
``--resume true`` (one process per core): both work through the cells, each then waits for the cells the
other holds, and both end with the same tables. Claims are checked by process id, so the processes must
run on one machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CLAIM_FILE = "claim.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0")
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def claim(cell_dir: Path) -> Iterator[bool]:
    """Yield True when this process holds ``cell_dir`` (released after), False when another live one does."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    path = cell_dir / CLAIM_FILE
    for _ in range(2):  # a second try after removing a stale claim
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _holder(path)
            if pid is None or pid == 0:  # being written this instant: treat as held
                yield False
                return
            if pid != os.getpid() and _alive(pid):
                yield False
                return
            path.unlink(missing_ok=True)  # its process is gone (or it is ours from before): take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


def run_claimed(
    jobs: list[tuple[Path, Callable[[], object]]],
    done: Callable[[Path], bool] | None = None,
    poll_s: float = 10.0,
) -> None:
    """Run every job whose cell is not ``done`` and not held by another process; wait for the held ones.

    Args:
        jobs: ``(cell_dir, run)`` pairs in order; ``run()`` trains the cell (and marks it done).
        done: whether a cell folder holds a finished cell (default: its ``cell.json`` exists).
        poll_s: seconds between looks at cells another process holds.
    """
    from tqdm.auto import tqdm

    from experiments.cell import CELL_FILE

    done = done or (lambda cell_dir: (cell_dir / CELL_FILE).exists())
    pending = list(jobs)
    with tqdm(total=len(jobs), desc="cells") as bar:
        while pending:
            waiting = []
            for cell_dir, run in pending:
                if done(cell_dir):
                    bar.update(1)
                    continue
                with claim(cell_dir) as mine:
                    if mine:
                        run()
                        bar.update(1)
                    else:
                        waiting.append((cell_dir, run))
            if waiting and len(waiting) == len(pending):
                bar.set_postfix_str(f"waiting for {len(waiting)} cell(s) another process trains")
                time.sleep(poll_s)
            pending = waiting
