"""Datasets and metrics of the memexp task YAMLs, through the project's own loaders and metrics.

lm-eval imports this file by path (``!function utils.NAME`` in the YAMLs beside it). The items are
those ``decoding score`` reads from the same file (``decoding.mc_datasets``), each question's prompt is
``decoding.mc.truthfulqa_prompt`` and its choices are the answers ``decoding.mc.evaluate_truthfulqa``
scores, in the same order; MC1/MC2/MC3 come from ``decoding.mc.mc_metrics``. A task file that
``include:``s one of these YAMLs can point ``dataset_kwargs: {data_file: PATH}`` at another file of
the same layout (e.g. the full TruthfulQA.csv or a FACTOR csv).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def factual_mc(data_file: str | None = None, **_) -> dict:
    """``{"test": Dataset}`` of TruthfulQA-layout questions (default: the shipped ``factual_mc.csv``).

    Each row: ``question``, ``prompt`` (the 6-shot prompt), ``answers`` (unique, best first) and the
    indices into ``answers`` of the true, false and MC1-false answers (``mc1_false`` is empty for the
    CSV layout, where MC1 compares the best answer with all false ones).
    """
    import datasets

    from decoding.mc import truthfulqa_prompt
    from decoding.mc_datasets import load_truthfulqa

    rows = []
    for item in load_truthfulqa(data_file or DATA_DIR / "factual_mc.csv"):
        answers = list(dict.fromkeys([item.best, *item.true, *item.false, *item.mc1_false]))
        rows.append(
            {
                "question": item.question,
                "prompt": truthfulqa_prompt(item.question),
                "answers": answers,
                "true": [answers.index(a) for a in item.true],
                "false": [answers.index(a) for a in item.false],
                "mc1_false": [answers.index(a) for a in item.mc1_false],
            }
        )
    return {"test": datasets.Dataset.from_list(rows)}


def process_mc(doc: dict, results: list) -> dict:
    """MC1, MC2, MC3 of one question and ``mc2_nan`` (1 when its MC2 was NaN and counted 0)."""
    from decoding.mc import mc_metrics

    s = [float(ll) for ll, _ in results]
    m = mc_metrics(
        [s[i] for i in doc["true"]],
        [s[i] for i in doc["false"]],
        s[0],
        [s[i] for i in doc["mc1_false"]] or None,
    )
    return {"mc1": m["MC1"], "mc2": m["MC2"], "mc3": m["MC3"], "mc2_nan": m["mc2_nan"]}


def factual_factor(data_file: str | None = None, prefix_column: str | None = None, **_) -> dict:
    """``{"test": Dataset}`` of FACTOR items: ``prefix`` and ``choices`` (true completion first)."""
    import datasets

    from decoding.mc_datasets import load_factor

    items = load_factor(data_file or DATA_DIR / "factual_factor.csv", prefix_column)
    rows = [{"prefix": it.prefix, "choices": [it.completion, *it.contradictions]} for it in items]
    return {"test": datasets.Dataset.from_list(rows)}


def process_factor(doc: dict, results: list) -> dict:
    """FACTOR accuracy: correct unless a contradiction scores strictly higher (ties count as correct)."""
    s = [float(ll) for ll, _ in results]
    return {"acc": float(not any(v > s[0] for v in s[1:]))}
