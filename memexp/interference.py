"""Interference: does memorising facts change what a model otherwise knows?

Three measurements of one model, each per item so that a base model and a fine-tuned one can be
compared item by item (paired):

- ``real_text_nll``: the NLL per token of the shipped real text (``memexp/real_text.py``), per
  ``chunk_len``-token chunk (every chunk has ``chunk_len - 1`` predictions, so the mean over chunks
  is the mean per token);
- ``mc1`` / ``mc2``: factual multiple choice on ``decoding/data/factual_mc.csv`` (TruthfulQA layout,
  the greedy head, the scorer of ``decoding/mc.py``), on a seeded sample of ``mc_sample`` questions;
- ``answers``: greedy answers (token ids, ``max_new_tokens`` at most) to the shipped general
  questions (``memexp/data/general_questions.txt``), in the chat template when the tokenizer has one.

:func:`compare` turns two measurements into ratios after / before, with a paired percentile
bootstrap (the same resampled items for both)::

    idx      (B, n)  decoding.bootstrap.resample_indices(n, B, seed)
    ratio_b  = mean_i after[idx[b, i]] / mean_i before[idx[b, i]]
    interval = percentiles (2.5, 97.5) of ratio_b

and the fraction of questions whose greedy answer is identical to the base model's, token for
token (with the bootstrap interval of that mean). A model compared with itself gives every ratio
1.0 exactly, an interval of (1.0, 1.0) and 100% identical answers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import decoding
from decoding.bootstrap import interval, resample_indices
from decoding.errors import UserError
from memexp.real_text import DATA, real_text_chunks

FACTUAL_MC = Path(decoding.__file__).resolve().parent / "data" / "factual_mc.csv"
GENERAL_QUESTIONS = DATA / "general_questions.txt"
RATIO_METRICS = ("real_text_nll", "mc1", "mc2")


@dataclass
class Measurement:
    """Per-item values of one model (see the module docstring), the settings and the seconds each took."""

    real_text_nll: list[float]
    mc1: list[float]
    mc2: list[float]
    answers: list[list[int]]
    settings: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Mean of each metric (``real_text_nll`` in nats per token)."""
        return {k: float(np.mean(getattr(self, k))) for k in RATIO_METRICS}

    def to_dict(self) -> dict:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        """The measurement :meth:`to_dict` wrote."""
        return cls(**data)


def real_text_nll(
    model: nn.Module, chunks: Sequence[Sequence[int]], batch_size: int = 8, progress: bool = True
) -> list[float]:
    """Mean next-token NLL (nats) of each equal-length chunk of token ids, batched, without grad."""
    from tqdm.auto import tqdm

    if len({len(c) for c in chunks}) != 1:
        raise ValueError("real-text chunks must all have the same length")
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for b in tqdm(range(0, len(chunks), batch_size), desc="real-text nll", disable=not progress):
            ids = torch.tensor(chunks[b : b + batch_size], device=device)  # (B, T)
            logits = model(input_ids=ids).logits.float()  # (B, T, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            out += nll.mean(1).tolist()
    return out


def sample_mc_items(n: int | None, seed: int = 0, path: str | Path = FACTUAL_MC) -> list:
    """A seeded sample of ``n`` TruthfulQA-layout questions in file order (all when None or too many)."""
    from decoding.mc_datasets import load_truthfulqa

    items = load_truthfulqa(path)
    if n is None or n >= len(items):
        return items
    if n < 1:
        raise UserError(f"mc_sample={n} must be >= 1 (or None for all {len(items)} questions)")
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def factual_mc(model: nn.Module, tokenizer, items: Sequence, progress: bool = True) -> tuple[list, list]:
    """Per-question MC1 and MC2 with the greedy head (6-shot TruthfulQA prompt, raw scores)."""
    from decoding.head_spec import make_head
    from decoding.mc import evaluate_truthfulqa

    rows: list[dict] = []
    evaluate_truthfulqa(
        model, tokenizer, items, make_head("greedy"), progress=progress, per_item=rows, desc="factual mc"
    )
    return [r["MC1"] for r in rows], [r["MC2"] for r in rows]


def load_questions(path: str | Path = GENERAL_QUESTIONS) -> list[str]:
    """The general questions, one per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"questions file {path} does not exist; pass a text file with one question per line")
    questions = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not questions:
        raise UserError(f"questions file {path} holds no questions; write one question per line")
    return questions


def greedy_answers(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[int]]:
    """Greedy answer ids of each question (chat template when there is one; EOS and padding dropped)."""
    from tqdm.auto import tqdm

    from decoding.generate import generate

    chat = getattr(tokenizer, "chat_template", None) is not None
    inputs = list(questions)
    if chat:
        inputs = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions
        ]
    special = set(tokenizer.all_special_ids)
    out: list[list[int]] = []
    for b in tqdm(range(0, len(inputs), batch_size), desc="greedy answers", disable=not progress):
        res = generate(
            model, tokenizer, inputs[b : b + batch_size], None, max_new_tokens, add_special_tokens=not chat
        )
        out += [[t for t in row if t not in special] for row in res.token_ids]
    return out


def measure(
    model: nn.Module,
    tokenizer,
    chunk_len: int = 128,
    max_chunks: int | None = None,
    mc_sample: int | None = 100,
    mc_seed: int = 0,
    questions: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
) -> Measurement:
    """Measure the real-text NLL, factual MC and greedy answers of ``model`` (in eval mode).

    Args:
        model, tokenizer: an HF causal LM (a peft model too) and its tokenizer.
        chunk_len: tokens per real-text chunk.
        max_chunks: real-text chunks to score (all when None).
        mc_sample: factual MC questions, a seeded sample (all 377 when None).
        mc_seed: seed of that sample.
        questions: general questions (the shipped ones when None).
        max_new_tokens: most tokens per greedy answer.
        batch_size: rows per forward for the NLL and per generation batch.
        progress: show progress bars.
    """
    was_training = model.training
    model.eval()
    questions = load_questions() if questions is None else list(questions)
    try:
        t0 = time.perf_counter()
        chunks = real_text_chunks(tokenizer, chunk_len, max_chunks)
        nll = real_text_nll(model, chunks, batch_size, progress)
        t1 = time.perf_counter()
        mc1, mc2 = factual_mc(model, tokenizer, sample_mc_items(mc_sample, mc_seed), progress)
        t2 = time.perf_counter()
        answers = greedy_answers(model, tokenizer, questions, max_new_tokens, batch_size, progress)
        t3 = time.perf_counter()
    finally:
        model.train(was_training)
    seconds = {"real_text_nll": t1 - t0, "factual_mc": t2 - t1, "greedy_answers": t3 - t2}
    settings = {
        "chunk_len": chunk_len,
        "n_chunks": len(chunks),
        "n_tokens_predicted": len(chunks) * (chunk_len - 1),
        "mc_sample": len(mc1),
        "mc_seed": mc_seed,
        "questions": questions,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,  # padding in a generation batch can move a greedy tie
    }
    return Measurement(nll, mc1, mc2, answers, settings, seconds)


def ratio_interval(
    before: Sequence[float], after: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """``{"before", "after", "ratio", "low", "high", "n"}``: mean(after) / mean(before), paired bootstrap.

    The ratio is NaN (and its interval too) when mean(before) is 0. In a resample whose before-mean
    is 0, an after-mean of 0 counts as ratio 1 (no change) and any other as an infinite ratio, which
    widens the interval honestly.
    """
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 1 or len(b) == 0:
        raise ValueError(f"need paired per-item values of one shape, got {b.shape} and {a.shape}")
    out = {"before": float(b.mean()), "after": float(a.mean()), "n": len(b)}
    if b.mean() == 0:
        return {**out, "ratio": float("nan"), "low": float("nan"), "high": float("nan")}
    idx = resample_indices(len(b), n_boot, seed)  # (B, n)
    mean_b, mean_a = b[idx].mean(1), a[idx].mean(1)  # (B,) paired: the same items for both
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = np.where(mean_a == mean_b, 1.0, mean_a / mean_b)  # (B,) 0 / 0 counts as no change
    with np.errstate(invalid="ignore"):
        low, high = interval(samples, level)
    # a percentile that falls among infinite samples interpolates inf - inf = NaN: it is infinite
    low, high = (float("inf") if v != v else v for v in (low, high))
    return {**out, "ratio": float(a.mean() / b.mean()), "low": low, "high": high}


def identical_answers(before: Measurement, after: Measurement) -> list[float]:
    """Per question: 1.0 when ``after``'s greedy answer equals ``before``'s token for token, else 0.0."""
    return [float(x == y) for x, y in zip(before.answers, after.answers)]


def compare(
    before: Measurement, after: Measurement, n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Each ratio after / before with its paired bootstrap interval, and the identical-answer fraction.

    Returns:
        ``{"real_text_nll" | "mc1" | "mc2": ratio_interval(...), "identical_answers": {"fraction",
        "low", "high", "n"}}``.

    Raises:
        UserError: the two measurements used different settings (items, chunks, questions, length).
    """
    keys = ("chunk_len", "n_chunks", "mc_sample", "mc_seed", "questions", "max_new_tokens", "batch_size")
    diff = [k for k in keys if before.settings.get(k) != after.settings.get(k)]
    if diff:
        raise UserError(f"the two measurements differ in {diff}; measure both with the same settings")
    out = {
        k: ratio_interval(getattr(before, k), getattr(after, k), n_boot, seed, level) for k in RATIO_METRICS
    }
    same = np.asarray(identical_answers(before, after))
    low, high = interval(same[resample_indices(len(same), n_boot, seed)].mean(1), level)
    out["identical_answers"] = {"fraction": float(same.mean()), "low": low, "high": high, "n": len(same)}
    return out
