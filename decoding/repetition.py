"""Repetition metrics of one generated continuation (token ids), for comparing decoding heads.

::

    grams_n(x)            = [x[i:i+n] for i in 0 .. len(x) - n]          (len(x) - n + 1 n-grams)
    repeated_ngram_rate   = #{i : x[i:i+n] == x[j:j+n] for some j < i} / #grams      (rep-n)
    distinct_n            = #set(grams_n) / #grams                                     (distinct-n)

A continuation of the same n-gram repeated over and over has a rep-n near 1 and a distinct-n near 0.
For one n, ``repeated_ngram_rate == 1 - distinct_n`` (an n-gram either occurs for the first time or
repeats); the benchmarks report rep-4 and distinct-2, two different n. A continuation shorter than n
tokens has no n-gram: both metrics are ``None`` then (callers drop it and say how many they dropped).
The metrics are computed on token ids, so they depend on the tokenizer; strip EOS/pad ids first.
"""

from __future__ import annotations

from collections.abc import Sequence


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The ``len(ids) - n + 1`` n-grams of ``ids`` in order (none when ``ids`` is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    ids = list(ids)
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def repeated_ngram_rate(ids: Sequence[int], n: int = 4) -> float | None:
    """Fraction of the n-grams of ``ids`` that already occurred earlier in ``ids`` (None: no n-gram)."""
    grams = ngrams(ids, n)
    if not grams:
        return None
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def distinct_n(ids: Sequence[int], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of ``ids`` (None: no n-gram)."""
    grams = ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else None
