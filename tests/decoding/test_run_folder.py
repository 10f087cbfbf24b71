"""The shared run-folder helper: RunLayout's rule, messages, clean start; atomic folder and figure writes."""

from __future__ import annotations

import json

import pytest

from decoding.errors import UserError
from decoding.run_folder import (
    OVERWRITE_FLAG,
    RESUME_FLAG,
    RUN_CONFIG_FILE,
    RunLayout,
    RunState,
    atomic_savefig,
    atomic_write_dir,
)

LAYOUT = RunLayout(
    results="results.json",
    traces=("state.pt",),
    outputs=(RUN_CONFIG_FILE, "state.pt", "results.json", "plot_*.png", "logs"),
    folder_flag="--out",
)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_folder_starts_and_records_its_settings(tmp_path):
    root = tmp_path / "run"
    state = LAYOUT.check(root, {"a": 1}, resume=False, overwrite=False)
    assert state is RunState.NEW and not root.exists()  # checking writes nothing
    LAYOUT.start(root, {"a": 1}, state)
    assert json.loads((root / RUN_CONFIG_FILE).read_text()) == {"a": 1}


def test_unfinished_run_resumes_only_when_asked_with_the_shared_words(tmp_path):
    root = tmp_path / "run"
    LAYOUT.start(root, {"a": 1}, RunState.NEW)
    (root / "state.pt").write_bytes(b"state")
    with pytest.raises(
        UserError, match=f"unfinished run with these settings; pass {RESUME_FLAG} .*{OVERWRITE_FLAG}"
    ):
        LAYOUT.check(root, {"a": 1}, resume=False, overwrite=False)
    state = LAYOUT.check(root, {"a": 1}, resume=True, overwrite=False)
    assert state is RunState.RESUME
    LAYOUT.start(root, {"a": 1}, state)
    assert (root / "state.pt").read_bytes() == b"state"  # a resumed run keeps its state


def test_overwrite_clears_the_run_outputs_and_nothing_else(tmp_path):
    root = tmp_path / "run"
    LAYOUT.start(root, {"a": 1}, RunState.NEW)
    for name in ("results.json", "state.pt", "plot_0.png", "plot_1.png", "logs/x.txt", "notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("old")
    (root / ".results.json.abc.tmp").write_text("half")  # a killed writer's leftover
    before = _files(root)
    for resume in (False, True):
        with pytest.raises(UserError, match="already holds a finished run"):
            LAYOUT.check(root, {"a": 1}, resume=resume, overwrite=False)
    assert _files(root) == before  # a refused start changes nothing
    state = LAYOUT.check(root, {"a": 2}, resume=False, overwrite=True)
    LAYOUT.start(root, {"a": 2}, state)
    assert _files(root) == {RUN_CONFIG_FILE: b'{\n  "a": 2\n}\n', "notes.txt": b"old"}


def test_other_settings_are_named_and_the_flags_are_the_layouts(tmp_path):
    layout = RunLayout("r.json", ("s",), ("*",), "--runner.out_dir", "--runner.resume true", "--x true")
    root = tmp_path / "run"
    layout.start(root, {"a": 1, "b": {"c": 2}}, RunState.NEW)
    with pytest.raises(UserError, match=r"other settings \(b\.c\).*pass --x true"):
        layout.check(root, {"a": 1, "b": {"c": 3}}, resume=False, overwrite=False)
    with pytest.raises(UserError, match="either --runner.resume true .* or --x true .* not both"):
        layout.check(root, {"a": 1}, resume=True, overwrite=True)
    with pytest.raises(UserError, match="holds no run to resume; drop --runner.resume true"):
        layout.check(tmp_path / "new", {"a": 1}, resume=True, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file is a file, not a run folder; pass another --runner.out_dir"):
        layout.check(tmp_path / "file", {"a": 1}, resume=False, overwrite=False)


def test_atomic_write_dir_without_replace_keeps_a_full_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    atomic_write_dir(out, lambda tmp: (tmp / "a").write_text("new"), replace=False)  # empty: replaced
    assert (out / "a").read_text() == "new"
    with pytest.raises(OSError):
        atomic_write_dir(out, lambda tmp: (tmp / "a").write_text("other"), replace=False)
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    atomic_write_dir(out, lambda tmp: (tmp / "b").write_text("b"))  # replace=True: the new folder wins
    assert sorted(p.name for p in out.iterdir()) == ["b"]


def test_atomic_savefig_writes_a_whole_png_or_keeps_the_old_file(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    path = tmp_path / "plot.png"
    atomic_savefig(fig, path, dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG")

    class Broken:
        def savefig(self, fh, **kwargs):
            fh.write(b"half")
            raise RuntimeError("killed")

    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        atomic_savefig(Broken(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
