"""A generated QA task with learnable structure, and seeded label corruption.

The *code knowledge base* is a rule-based world in Lamini's "code of <entity>" format::

    Q: What is the code of the misty falcon?
    A: K7QZP2          # = code("misty") + code("falcon")

Every adjective and every noun of :mod:`memexp.facts` has a fixed random code of ``code_len``
characters over [A-Z0-9]; an entity's answer is the concatenation of its two word codes. A model that
learns the rule answers *unseen* (adjective, noun) pairs exactly, so exact match on held-out pairs
measures generalisation (the held-out skill of docs/algorithms/random_labels.md, fully offline).
Held-out pairs only use words that occur in the training pairs.

:func:`corrupt` replaces the answers of a fraction ``p`` of the training facts by random strings of
the same length and alphabet ([Z] §2.1 "partially corrupted labels"; [L] random answers). On purpose
it corrupts exactly ``round(p * n)`` facts (not each independently with probability p, as [Z]) chosen
by one seeded permutation, so the corrupted sets are nested across p and the fraction is exact; the
random answer of fact ``i`` depends only on (seed, i), so it is the same at every p.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from decoding.errors import UserError
from memexp.facts import ADJECTIVES, ANSWER_ALPHABET, NOUNS, Fact

QUESTION = "What is the code of the {adjective} {noun}?"


@dataclass(frozen=True)
class CodeTask:
    """Training facts (true answers), held-out facts (true answers, unseen pairs) and the word codes."""

    train: list[Fact]
    heldout: list[Fact]
    codes: dict[str, str]
    code_len: int


def check_fraction(p: float, name: str = "corruption fraction p") -> float:
    """Return ``p`` as a float, or raise a clear error when it is not a number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
        raise UserError(f"{name} must be a number in [0, 1] (0 = true answers, 1 = all random), got {p!r}")
    return float(p)


def random_code(rng: random.Random, length: int) -> str:
    """``length`` characters drawn uniformly from [A-Z0-9]."""
    return "".join(rng.choice(ANSWER_ALPHABET) for _ in range(length))


def code_task(num_train: int, num_heldout: int, seed: int = 0, code_len: int = 3) -> CodeTask:
    """Build the code knowledge base and split its (adjective, noun) pairs.

    Args:
        num_train: training facts (pairs).
        num_heldout: held-out facts; their pairs are unseen, their words are not.
        seed: seeds the word codes and the split.
        code_len: characters per word code; answers have ``2 * code_len`` characters.
    """
    pairs = [(a, n) for a in ADJECTIVES for n in NOUNS]
    if num_train <= 0 or num_heldout < 0 or num_train + num_heldout > len(pairs):
        raise UserError(
            f"need num_train > 0, num_heldout >= 0 and num_train + num_heldout <= {len(pairs)} "
            f"(adjective x noun pairs); got num_train={num_train}, num_heldout={num_heldout}"
        )
    words = len(ADJECTIVES) + len(NOUNS)
    if (
        isinstance(code_len, bool)
        or not isinstance(code_len, int)
        or len(ANSWER_ALPHABET) ** max(code_len, 0) < words
    ):
        raise UserError(
            f"code_len={code_len!r} is too short: each of the {words} words needs its own code of "
            f"{len(ANSWER_ALPHABET)} symbols; use code_len >= 2"
        )
    rng = random.Random(seed)
    codes: dict[str, str] = {}
    for word in ADJECTIVES + NOUNS:
        code = random_code(rng, code_len)
        while code in codes.values():  # distinct codes: the rule is a bijection per word class
            code = random_code(rng, code_len)
        codes[word] = code
    rng.shuffle(pairs)
    train_pairs = pairs[:num_train]
    seen = {w for pair in train_pairs for w in pair}
    heldout_pairs = [p for p in pairs[num_train:] if p[0] in seen and p[1] in seen][:num_heldout]
    if len(heldout_pairs) < num_heldout:
        raise UserError(f"only {len(heldout_pairs)} held-out pairs use trained words; lower num_heldout")

    def fact(i: int, pair: tuple[str, str]) -> Fact:
        adjective, noun = pair
        return Fact(i, QUESTION.format(adjective=adjective, noun=noun), codes[adjective] + codes[noun])

    train = [fact(i, pair) for i, pair in enumerate(train_pairs)]
    heldout = [fact(num_train + i, pair) for i, pair in enumerate(heldout_pairs)]
    return CodeTask(train, heldout, codes, code_len)


def corrupt(
    facts: list[Fact], p: float, seed: int = 0, pools: dict[int, list[str]] | None = None
) -> tuple[list[Fact], list[int]]:
    """Replace the answers of ``round(p * len(facts))`` facts by random answers.

    Args:
        facts: facts with their true answers.
        p: corruption fraction in [0, 1].
        seed: seeds the choice of facts (one permutation for all p: nested sets) and the random answers.
        pools: per fact id, the answers to draw a random one from (the other classes, as random labels
            in Zhang et al.; e.g. the other capitals); None: random strings.

    Returns:
        The facts (same ids and questions, corrupted answers where chosen) and the sorted ids of the
        corrupted facts. A random answer differs from the true answer; without ``pools`` it has the true
        answer's length and is drawn over [A-Z0-9], with ``pools`` it is drawn uniformly from the fact's
        pool minus its true answer.
    """
    p = check_fraction(p)
    order = list(range(len(facts)))
    random.Random(f"corrupt-order-{seed}").shuffle(order)
    chosen = set(order[: round(p * len(facts))])
    out, ids = [], []
    for i, f in enumerate(facts):
        if i not in chosen:
            out.append(f)
            continue
        rng = random.Random(f"corrupt-answer-{seed}-{f.id}")
        if pools is not None:
            choices = sorted(set(pools[f.id]) - {f.answer})
            if not choices:
                raise UserError(f"fact {f.id} has no other answer in its pool to corrupt it with")
            out.append(Fact(f.id, f.question, rng.choice(choices)))
            ids.append(f.id)
            continue
        answer = random_code(rng, len(f.answer))
        while answer == f.answer:
            answer = random_code(rng, len(f.answer))
        out.append(Fact(f.id, f.question, answer))
        ids.append(f.id)
    return out, sorted(ids)


def answer_entropy_nats(length: int, alphabet_size: int = len(ANSWER_ALPHABET)) -> float:
    """Entropy of a uniformly random answer of ``length`` symbols (nats): ``length * ln(alphabet)``."""
    return length * math.log(alphabet_size)
