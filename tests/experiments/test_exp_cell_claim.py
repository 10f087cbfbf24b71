"""Two study processes on one run folder: each cell is trained once; a dead process's claim is taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from experiments.cell_claim import CLAIM_FILE, claim, run_claimed


def done(cell) -> bool:
    return (cell / "cell.json").exists()


def test_a_claim_is_exclusive_while_its_process_lives(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / CLAIM_FILE).write_text(str(other.pid))
        with claim(tmp_path) as mine:
            assert not mine
        assert (tmp_path / CLAIM_FILE).exists()  # left to its holder
    finally:
        other.kill()
        other.wait()
    with claim(tmp_path) as mine:  # the holder died: the claim is stale and taken over
        assert mine
        assert (tmp_path / CLAIM_FILE).read_text() == str(os.getpid())
        with claim(tmp_path) as again:  # the holder itself may claim again (its own, e.g. after a crash)
            assert again
    assert not (tmp_path / CLAIM_FILE).exists()


def test_run_claimed_runs_free_cells_once_and_waits_for_held_ones(tmp_path):
    cells = [tmp_path / f"c{i}" for i in range(3)]
    ran = []

    def job(cell):
        def run():
            ran.append(cell.name)
            (cell / "cell.json").write_text("{}")

        return run

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cells[1].mkdir()
        (cells[1] / CLAIM_FILE).write_text(str(other.pid))  # another process trains c1

        def the_other_finishes():
            time.sleep(0.5)
            (cells[1] / "cell.json").write_text("{}")

        threading.Thread(target=the_other_finishes).start()
        run_claimed([(c, job(c)) for c in cells], done, poll_s=0.1)
    finally:
        other.kill()
        other.wait()
    assert ran == ["c0", "c2"]
    assert all(done(c) for c in cells)
    run_claimed([(c, job(c)) for c in cells], done, poll_s=0.1)  # finished cells are not run again
    assert ran == ["c0", "c2"]
