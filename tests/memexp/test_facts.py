"""Fact files and generated facts: contents and line-precise errors."""

from __future__ import annotations

import json

import pytest

from memexp.facts import ANSWER_ALPHABET, Fact, load_facts, random_facts, save_facts


def test_random_facts_are_seeded_distinct_and_in_range():
    facts = random_facts(300, seed=1, min_len=8, max_len=32)
    assert facts == random_facts(300, seed=1, min_len=8, max_len=32)
    assert facts != random_facts(300, seed=2, min_len=8, max_len=32)
    assert len({f.question for f in facts}) == 300
    assert [f.id for f in facts] == list(range(300))
    assert all(8 <= len(f.answer) <= 32 and set(f.answer) <= set(ANSWER_ALPHABET) for f in facts)
    assert {len(f.answer) for f in facts} >= {8, 32}


def test_many_random_facts_stay_distinct():
    facts = random_facts(5000, seed=0)
    assert len({f.question for f in facts}) == 5000


def test_load_roundtrip_keeps_ids(tmp_path):
    facts = [Fact(7, "Who wrote it?", "Ann"), Fact(3, "Where?", "Here")]
    save_facts(facts, tmp_path / "f.jsonl")
    assert load_facts(tmp_path / "f.jsonl") == facts
    (tmp_path / "g.jsonl").write_text(
        '{"question": "a?", "answer": "b"}\n\n{"question": "c?", "answer": "d"}\n'
    )
    assert [f.id for f in load_facts(tmp_path / "g.jsonl")] == [0, 1]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no facts"),
        ('{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": \n', r"g\.jsonl:2: not valid JSON"),
        ('{"question": "a?", "answer": "b"}\n["a", "b"]\n', r"g\.jsonl:2: expected a JSON object"),
        ('{"question": "a?"}\n', r"g\.jsonl:1: 'answer' must be a non-empty string"),
        ('{"question": "a?", "answer": "  "}\n', r"g\.jsonl:1: 'answer' must be a non-empty string"),
        (
            '{"id": 1, "question": "a?", "answer": "b"}\n{"id": 1, "question": "c?", "answer": "d"}\n',
            r"g\.jsonl:2: id 1 repeats line 1",
        ),
    ],
)
def test_bad_fact_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "g.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_facts(path)


def test_missing_fact_file_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass an existing JSONL file"):
        load_facts(tmp_path / "missing.jsonl")


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="num_random_facts must be > 0"):
        random_facts(0)
    with pytest.raises(ValueError, match="min_len <= answer_max_len"):
        random_facts(3, min_len=9, max_len=4)


def test_fact_file_is_plain_json_lines(tmp_path):
    save_facts(random_facts(3), tmp_path / "f.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "question", "answer"}
