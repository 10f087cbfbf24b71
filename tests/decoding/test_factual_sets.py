"""The factual sets shipped in decoding/data/, read through the existing TruthfulQA and FACTOR loaders."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

import decoding
from decoding.mc_datasets import load_factor, load_truthfulqa

DATA = Path(decoding.__file__).parent / "data"
MC_FILE, FACTOR_FILE = DATA / "factual_mc.csv", DATA / "factual_factor.csv"
KINDS = {"geography", "science", "history", "units", "literature", "arithmetic", "misconception"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def mc_items():
    return load_truthfulqa(MC_FILE)


@pytest.fixture(scope="module")
def factor_items():
    return load_factor(FACTOR_FILE)


def _norm(text: str) -> str:
    return " ".join(text.lower().rstrip(".").split())


def test_mc_set_loads_with_one_best_true_answer_and_distinct_false_ones(mc_items):
    assert len(mc_items) >= 300
    questions = [_norm(item.question) for item in mc_items]
    assert len(set(questions)) == len(questions), [q for q, n in Counter(questions).items() if n > 1]
    for item in mc_items:
        assert item.best in item.true, item.question  # exactly one best answer, among the true ones
        assert len(item.true) >= 2 and len(item.false) >= 3, item.question
        true, false = {_norm(a) for a in item.true}, {_norm(a) for a in item.false}
        assert len(true) == len(item.true) and len(false) == len(item.false), item.question
        assert not true & false, item.question
        assert item.question.endswith("?"), item.question


def test_factor_set_loads_with_three_distinct_contradictions(factor_items):
    assert len(factor_items) >= 200
    prefixes = [_norm(item.prefix) for item in factor_items]
    assert len(set(prefixes)) == len(prefixes), [p for p, n in Counter(prefixes).items() if n > 1]
    for item in factor_items:
        assert len(item.contradictions) == 3
        options = [_norm(item.completion), *map(_norm, item.contradictions)]
        assert len(set(options)) == 4, item.prefix
        assert item.prefix.endswith(".") and not item.prefix.endswith(" "), item.prefix
        assert not item.completion.startswith(" "), item.prefix  # the scorer adds the space


@pytest.mark.parametrize("path", [MC_FILE, FACTOR_FILE], ids=lambda p: p.name)
def test_every_row_has_a_source_kind_and_no_stray_separator(path):
    rows = _rows(path)
    kinds = Counter(row["source_kind"] for row in rows)
    assert set(kinds) <= KINDS and len(kinds) >= 5, kinds
    for row in rows:
        assert all(value and value == value.strip() for value in row.values()), row
        for name in ("Question", "Best Answer", "turncated_prefixes", "completion"):
            assert ";" not in row.get(name, ""), row  # ';' separates answers in the TruthfulQA layout


def test_arithmetic_items_are_right():
    """The generated arithmetic items, recomputed from their questions."""
    ops = {"plus": int.__add__, "minus": int.__sub__, "multiplied by": int.__mul__}
    ops["divided by"] = int.__floordiv__
    checked = 0
    for item in load_truthfulqa(MC_FILE):
        q = item.question.removeprefix("What is ").removesuffix("?")
        for word, op in ops.items():
            if f" {word} " in q and q.split(f" {word} ")[0].isdigit():
                a, b = map(int, q.split(f" {word} "))
                assert item.best == f"{a} {word} {b} is {op(a, b)}.", item.question
                assert all(not f.endswith(f" is {op(a, b)}.") for f in item.false), item.question
                checked += 1
    assert checked >= 30


def test_the_shipped_files_are_package_data():
    """Every data file, the custom_generate folder and the lm-eval tasks match a package-data glob."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(decoding.__file__).parent
    globs = tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [*DATA.glob("*.csv"), *DATA.glob("*.txt"), *(root / "hub").rglob("*.py")]
    shipped += [*(root / "lm_eval_tasks").glob("*.yaml")]
    assert MC_FILE in shipped and root / "hub" / "custom_generate" / "generate.py" in shipped
    for file in shipped:
        assert any(file.relative_to(root).match(g) for g in globs["decoding"]), file


def test_open_prompts_are_distinct_single_line_requests():
    lines = (DATA / "open_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 50 and all(line and line == line.strip() for line in lines)
    assert len(set(lines)) == len(lines) and all(line.endswith(".") for line in lines)
