"""Local loaders for TruthfulQA multiple choice and FACTOR (no downloads).

TruthfulQA, any of:

- the reference CSV (``TruthfulQA.csv``): columns ``Question``, ``Best Answer``, ``Correct Answers``,
  ``Incorrect Answers`` (``;``-separated; stripped; a '.' appended unless present, as the reference);
- JSON / JSONL / parquet records with the same fields (``question``, ``best_answer``,
  ``correct_answers``, ``incorrect_answers``), e.g. HF's ``truthful_qa/generation`` layout, whose
  answers are lists without the final '.': strings are split on ``;``, list items kept whole; both are
  stripped and get the '.' of the reference, so the best answer matches its copy among the correct ones;
- the HF ``truthful_qa/multiple_choice`` layout: ``question``, ``mc1_targets`` and ``mc2_targets``,
  each ``{"choices": [...], "labels": [...]}``. MC1 then uses the mc1 choices (best = the one labelled
  1), MC2/MC3 the mc2 choices.

FACTOR: the AI21 CSV (``completion``, ``contradiction_0..2`` and the prefix column). As the
reference ``run_factor.py``, the prefix column is ``full_prefix`` when the file name contains
"news" and ``turncated_prefixes`` (sic) otherwise; ``prefix_column`` overrides it.

Malformed records raise ``ValueError`` naming the file and the line (CSV/JSONL) or record index.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TruthfulQAItem:
    """One TruthfulQA MC question.

    Attributes:
        question: the question text.
        best: the best true answer (MC1's true choice).
        true: all true answers (MC2/MC3).
        false: all false answers (MC2/MC3).
        mc1_false: MC1's false choices; ``false`` when empty (the CSV layout).
    """

    question: str
    best: str
    true: list[str]
    false: list[str]
    mc1_false: list[str] = field(default_factory=list)


@dataclass
class FactorItem:
    """One FACTOR item: a prefix, its true completion and contradictions."""

    prefix: str
    completion: str
    contradictions: list[str]


def split_multi_answer(ans: str, sep: str = ";", close: bool = True) -> list[str]:
    """The reference's answer splitting: split, strip, drop empties, add '.' when missing."""
    out = []
    for a in ans.strip().split(sep):
        a = a.strip()
        if a:
            out.append(a + "." if close and a[-1] != "." else a)
    return out


def format_best(ans: str, close: bool = True) -> str:
    """The reference's best answer: stripped, '.' added when missing."""
    ans = ans.strip()
    return ans + "." if close and ans and ans[-1] != "." else ans


def _records(path: Path) -> list[tuple[str, dict]]:
    """``(where, record)`` pairs of a CSV / JSON / JSONL / parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from err
        return out
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
        if isinstance(data, dict):
            data = data.get("data", data.get("validation", [data]))
        return [(f"{path} record {i}", r) for i, r in enumerate(data)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path} row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .json, .jsonl or .parquet")


def _answers(value, where: str, name: str) -> list[str]:
    if isinstance(value, str):
        return split_multi_answer(value)
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return [format_best(a) for a in value if a.strip()]
    raise ValueError(f"{where}: field {name!r} must be a ';'-separated string or a list of strings")


def _get(rec: dict, where: str, *names: str):
    for name in names:
        if name in rec and rec[name] is not None:
            return rec[name]
    raise ValueError(f"{where}: missing field {names[0]!r} (found {sorted(rec)})")


def _targets(rec: dict, key: str, where: str) -> tuple[list[str], list[str]]:
    t = rec[key]
    if not isinstance(t, dict) or len(t.get("choices", [])) != len(t.get("labels", [None])):
        raise ValueError(f"{where}: {key} must be {{'choices': [...], 'labels': [...]}} of equal length")
    true = [c for c, y in zip(t["choices"], t["labels"]) if int(y) == 1]
    false = [c for c, y in zip(t["choices"], t["labels"]) if int(y) == 0]
    return true, false


def load_truthfulqa(path: str | os.PathLike) -> list[TruthfulQAItem]:
    """Load TruthfulQA MC questions from a local CSV / JSON / JSONL / parquet file (layouts above)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TruthfulQA file {path} does not exist")
    items = []
    for where, rec in _records(path):
        if not isinstance(rec, dict):
            raise ValueError(
                f"{where}: expected an object with a question and answers, got {type(rec).__name__}"
            )
        question = _get(rec, where, "Question", "question")
        if "mc1_targets" in rec:
            best, mc1_false = _targets(rec, "mc1_targets", where)
            true, false = _targets(rec, "mc2_targets", where) if "mc2_targets" in rec else (best, mc1_false)
            if len(best) != 1:
                raise ValueError(f"{where}: mc1_targets must label exactly one choice 1, got {len(best)}")
            item = TruthfulQAItem(question, best[0], true, false, mc1_false)
        else:
            best = format_best(str(_get(rec, where, "Best Answer", "best_answer")))
            true = _answers(_get(rec, where, "Correct Answers", "correct_answers"), where, "Correct Answers")
            false = _answers(
                _get(rec, where, "Incorrect Answers", "incorrect_answers"), where, "Incorrect Answers"
            )
            if best not in true:
                raise ValueError(f"{where}: the best answer {best!r} is not among the correct answers")
            item = TruthfulQAItem(question, best, true, false)
        if not item.true or not item.false:
            raise ValueError(f"{where}: needs at least one true and one false answer")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no questions found")
    return items


def load_factor(path: str | os.PathLike, prefix_column: str | None = None) -> list[FactorItem]:
    """Load FACTOR items from the AI21 CSV (or JSON/JSONL/parquet with the same columns)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FACTOR file {path} does not exist")
    column = prefix_column or ("full_prefix" if "news" in path.name else "turncated_prefixes")
    items = []
    for where, rec in _records(path):
        prefix = (
            _get(rec, where, column)
            if prefix_column
            else _get(rec, where, column, "full_prefix", "turncated_prefixes", "prefix")
        )
        completion = _get(rec, where, "completion")
        contradictions = [rec.get(f"contradiction_{i}") for i in range(3)]
        if any(not isinstance(c, str) or not c for c in contradictions):
            raise ValueError(f"{where}: needs non-empty contradiction_0, contradiction_1, contradiction_2")
        items.append(FactorItem(str(prefix), str(completion), contradictions))
    if not items:
        raise ValueError(f"{path}: no items found")
    return items
