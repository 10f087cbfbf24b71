"""Question/answer facts: a JSONL loader with line-precise errors and a seeded random-fact generator.

A fact file holds one JSON object per line::

    {"question": "What is the code of Varo Tesk?", "answer": "K7Q2ZP0M"}

An optional integer ``"id"`` is kept; otherwise the fact's id is its 0-based position in the file.
Random facts follow the Lamini setting: "What is the code of <entity>?" answered by a random string
of ``min_len`` to ``max_len`` characters over [A-Z0-9] (log2(36) = 5.17 bits per character).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from decoding.errors import UserError
from decoding.run_folder import atomic_write_text

ANSWER_ALPHABET = string.ascii_uppercase + string.digits
CODE_QUESTION = "What is the code of {entity}?"  # the question of every random fact


@dataclass(frozen=True)
class Fact:
    """One memorisable fact."""

    id: int
    question: str
    answer: str


def load_facts(path: str | Path) -> list[Fact]:
    """Read facts from a UTF-8 JSONL file (a leading byte-order mark is allowed).

    Raises:
        UserError: the file is missing or empty, a line is not UTF-8 or not a JSON object with
            non-empty string ``question`` and ``answer``, ids repeat, or a question repeats (with the
            same or another answer); the message names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"facts file {path} does not exist; pass an existing JSONL file with one "
            '{"question": ..., "answer": ...} object per line, or set data.facts_path to null and '
            "data.num_random_facts > 0 to generate random facts"
        )
    facts: list[Fact] = []
    seen_ids: dict[int, int] = {}
    seen_questions: dict[str, tuple[int, str]] = {}  # question -> (line, answer)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{where}: not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); "
                    "save the facts file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{where}: not valid JSON ({err.msg}, column {err.colno}); each line must be one "
                    'JSON object like {"question": "...", "answer": "..."}'
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{where}: expected a JSON object with 'question' and 'answer', got {row!r:.80}"
                )
            for key in ("question", "answer"):
                value = row.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise UserError(f"{where}: '{key}' must be a non-empty string, got {value!r:.80}")
            fact_id = row.get("id", len(facts))
            if not isinstance(fact_id, int) or isinstance(fact_id, bool):
                raise UserError(f"{where}: 'id' must be an integer, got {fact_id!r:.80}")
            if fact_id in seen_ids:
                raise UserError(f"{where}: id {fact_id} repeats line {seen_ids[fact_id]}; ids must be unique")
            question, answer = row["question"].strip(), row["answer"].strip()
            if question in seen_questions:
                first, other = seen_questions[question]
                what = "with the same answer" if other == answer else f"with another answer ({other!r:.40})"
                raise UserError(
                    f"{where}: question {question!r:.80} already appears on line {first} {what}; "
                    "a question must have one answer: keep one line per question"
                )
            seen_ids[fact_id] = lineno
            seen_questions[question] = (lineno, answer)
            facts.append(Fact(fact_id, question, answer))
    if not facts:
        raise UserError(
            f"facts file {path} holds no facts; write one JSON object per line, e.g. "
            '{"question": "...", "answer": "..."}'
        )
    return facts


def save_facts(facts: list[Fact], path: str | Path) -> None:
    """Write facts as JSONL (``id``, ``question``, ``answer``), atomically."""
    lines = (json.dumps({"id": f.id, "question": f.question, "answer": f.answer}) for f in facts)
    atomic_write_text(path, "\n".join(lines) + "\n")


ADJECTIVES = (
    "red green blue black white silver golden hidden northern southern eastern western ancient modern "
    "quiet loud bright dark frozen burning silent hollow iron stone crystal velvet copper amber wild "
    "little grand broken secret lost royal lunar solar misty sandy rocky stormy sunny windy"
).split()
NOUNS = (
    "river mountain forest castle harbor valley island bridge tower garden desert village temple "
    "meadow canyon lake palace market library station lantern compass anchor falcon wolf tiger "
    "dragon phoenix raven owl fox bear lion eagle whale shark comet planet star moon ocean"
).split()


def entity_name(index: int) -> str:
    """The ``index``-th entity: "the <adjective> <noun>", with a number once the pairs run out."""
    pairs = len(ADJECTIVES) * len(NOUNS)
    adjective, noun = ADJECTIVES[index % len(ADJECTIVES)], NOUNS[(index // len(ADJECTIVES)) % len(NOUNS)]
    suffix = f" {index // pairs + 1}" if index >= pairs else ""
    return f"the {adjective} {noun}{suffix}"


def random_facts(n: int, seed: int = 0, min_len: int = 8, max_len: int = 32) -> list[Fact]:
    """Generate ``n`` facts with distinct entities and random [A-Z0-9] answers.

    Args:
        n: number of facts.
        seed: RNG seed; the same seed gives the same facts.
        min_len: shortest answer, in characters.
        max_len: longest answer, in characters.
    """
    if n <= 0:
        raise UserError(f"num_random_facts must be > 0, got {n}; ask for at least one fact")
    if not 1 <= min_len <= max_len:
        raise UserError(
            f"need 1 <= answer_min_len <= answer_max_len, got min_len={min_len}, max_len={max_len}"
        )
    rng = random.Random(seed)
    pairs = len(ADJECTIVES) * len(NOUNS)
    order = rng.sample(range(max(n, pairs)), n)  # distinct entities, spread over all pairs
    facts = []
    for i in range(n):
        answer = "".join(rng.choice(ANSWER_ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        facts.append(Fact(i, CODE_QUESTION.format(entity=entity_name(order[i])), answer))
    return facts
