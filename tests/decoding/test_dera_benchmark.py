"""The DeRa benchmark's data split and output-folder rule (experiments/one_word_qa.py, dera_real.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks.dera_real import ADAPTER_DIR, TABLE_JSON, TRAIN_FILE, check_out, parse_args, train_settings
from decoding.errors import UserError
from experiments.one_word_qa import FAMILIES, split_questions


def test_split_is_disjoint_by_entity_and_seeded():
    train, held = split_questions(48, seed=0)
    assert len(held) == 48
    assert {q.family for q in held} == set(FAMILIES)
    train_entities = {(q.family, q.entity) for q in train}
    assert not train_entities & {(q.family, q.entity) for q in held}
    assert not {q.text for q in train} & {q.text for q in held}
    for family, (facts, templates) in FAMILIES.items():  # every fact is used once, in one of the two sets
        n_held = sum(q.family == family for q in held)
        assert sum(q.family == family for q in train) == len(templates) * (len(facts) - n_held)
    assert all(q.answer == FAMILIES[q.family][0][q.entity] for q in train + held)
    assert split_questions(48, seed=0) == (train, held)
    assert split_questions(48, seed=1)[1] != held
    with pytest.raises(ValueError, match="use n_eval <= 77"):
        split_questions(200)


def _settings(tmp_path, *extra: str) -> tuple:
    args = parse_args(["--out", str(tmp_path / "out"), *extra])
    return args, train_settings(args)


def _write_adapter(out, settings: dict) -> None:
    (out / ADAPTER_DIR).mkdir(parents=True)
    record = {"settings": settings, "train_seconds": 1.0, "losses": [2.0, 1.0]}
    (out / ADAPTER_DIR / TRAIN_FILE).write_text(json.dumps(record))


def test_output_folder_rule(tmp_path):
    args, settings = _settings(tmp_path)
    out = tmp_path / "out"
    assert check_out(out, settings, overwrite=False) is False  # new folder
    out.mkdir()
    assert check_out(out, settings, overwrite=False) is False  # empty folder
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no adapter of this benchmark"):
        check_out(out, settings, overwrite=False)
    (out / "notes.txt").unlink()
    _write_adapter(out, settings)
    assert check_out(out, settings, overwrite=False) is True  # same settings: reuse
    _, other = _settings(tmp_path, "--lr", "1e-3", "--steps", "7")
    with pytest.raises(UserError, match=r"other settings \(lr, steps\); pass --overwrite to retrain"):
        check_out(out, other, overwrite=False)
    assert check_out(out, other, overwrite=True) is False  # overwrite: retrain
    (out / TABLE_JSON).write_text("{}")
    with pytest.raises(UserError, match="already holds a finished sweep; pass --overwrite"):
        check_out(out, settings, overwrite=False)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--lams", "0", "-1"], "lambda must be >= 0"),
        (["--lams", "0", "1", "1"], "repeats a value"),
        (["--n_eval", "500"], "--n_eval: n_eval=500"),
        (["--steps", "0"], "--steps 0 must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path, argv, match):
    with pytest.raises(UserError, match=match):
        parse_args(["--out", str(tmp_path / "o"), *argv])
