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

ANSWER_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Fact:
    """One memorisable fact."""

    id: int
    question: str
    answer: str


def load_facts(path: str | Path) -> list[Fact]:
    """Read facts from a JSONL file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, or a line is not a JSON object with non-empty string
            ``question`` and ``answer`` (the message names file and line), or ids repeat.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"facts file {path} does not exist; pass an existing JSONL file with one "
            '{"question": ..., "answer": ...} object per line, or set data.facts_path to null and '
            "data.num_random_facts > 0 to generate random facts"
        )
    facts: list[Fact] = []
    seen: dict[int, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: not valid JSON ({err.msg}); each line must be one JSON object"
                ) from err
            if not isinstance(row, dict):
                raise ValueError(
                    f"{where}: expected a JSON object with 'question' and 'answer', got {row!r:.80}"
                )
            for key in ("question", "answer"):
                value = row.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{where}: '{key}' must be a non-empty string, got {value!r:.80}")
            fact_id = row.get("id", len(facts))
            if not isinstance(fact_id, int):
                raise ValueError(f"{where}: 'id' must be an integer, got {fact_id!r:.80}")
            if fact_id in seen:
                raise ValueError(f"{where}: id {fact_id} repeats line {seen[fact_id]}; ids must be unique")
            seen[fact_id] = lineno
            facts.append(Fact(fact_id, row["question"].strip(), row["answer"].strip()))
    if not facts:
        raise ValueError(f"facts file {path} holds no facts; write one JSON object per line")
    return facts


def save_facts(facts: list[Fact], path: str | Path) -> None:
    """Write facts as JSONL (``id``, ``question``, ``answer``)."""
    lines = (json.dumps({"id": f.id, "question": f.question, "answer": f.answer}) for f in facts)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


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
        raise ValueError(f"num_random_facts must be > 0, got {n}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    rng = random.Random(seed)
    pairs = len(ADJECTIVES) * len(NOUNS)
    order = rng.sample(range(max(n, pairs)), n)  # distinct entities, spread over all pairs
    facts = []
    for i in range(n):
        answer = "".join(rng.choice(ANSWER_ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        facts.append(Fact(i, f"What is the code of {entity_name(order[i])}?", answer))
    return facts
