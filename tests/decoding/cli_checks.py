"""The check every bad-input case of the ``decoding`` command shares (tests/decoding/test_cli*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from decoding.cli import main


def _snapshot(folder: Path) -> dict[Path, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def assert_refused_in_one_line(argv: list[str], message: str, folder: Path, capsys) -> None:
    """``decoding ARGV`` exits non-zero with one ``decoding:`` line holding ``message``, no traceback,
    and leaves every file and folder under ``folder`` as it was."""
    before = _snapshot(folder)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("decoding:")]
    assert exc.value.code not in (0, None)
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(folder) == before  # nothing written
