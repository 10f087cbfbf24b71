"""A study's ``summary.md``: each claim tested, the measured numbers with intervals, and a verdict.

The verdict rule (:func:`experiments.seed_stats.verdict`): the 95% interval over seeds lies entirely on
the claim's side of the decision boundary -> supported; entirely on the other side -> not supported;
it overlaps the boundary (or is undefined, one seed) -> inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from decoding.run_folder import atomic_write_text

SUMMARY_FILE = "summary.md"


@dataclass
class Claim:
    """One tested claim for one subject (a method, or a method and head).

    Attributes:
        statement: the claim in words.
        subject: what it is tested on (``full``, ``lora / greedy``...).
        measured: the measured numbers with their intervals, in words.
        boundary: the decision boundary in words.
        verdict: supported / not supported / inconclusive.
        separation: a sentence saying whether the relevant intervals separate.
    """

    statement: str
    subject: str
    measured: str
    boundary: str
    verdict: str
    separation: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (results.json)."""
        return dict(self.__dict__)


def summary_markdown(title: str, intro: list[str], claims: list[Claim]) -> str:
    """The text of ``summary.md``: grouped by statement, one bullet per subject."""
    lines = [f"# {title}", "", *intro, ""]
    statements = list(dict.fromkeys(c.statement for c in claims))
    for statement in statements:
        lines += [f"## Claim: {statement}", ""]
        mine = [c for c in claims if c.statement == statement]
        lines += [f"Decision boundary: {mine[0].boundary}.", ""]
        for c in mine:
            lines.append(f"- **{c.subject}: {c.verdict}.** {c.measured}. {c.separation}")
        lines.append("")
    counts = {v: sum(c.verdict == v for c in claims) for v in ("supported", "not supported", "inconclusive")}
    lines.append("Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    return "\n".join(lines) + "\n"


def write_summary(root: Path, title: str, intro: list[str], claims: list[Claim]) -> Path:
    """Write ``summary.md`` atomically into ``root``; return its path."""
    path = root / SUMMARY_FILE
    atomic_write_text(path, summary_markdown(title, intro, claims))
    return path
