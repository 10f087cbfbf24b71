"""Measuring generated answers: word counts, whole-word matches, per-token NLL under a model.

Used by ``benchmarks/dera_real.py`` to put numbers on a change of behaviour (one-word answers instead of
sentences) and on how far the outputs drift from a reference model::

    words = [word_count(t) for t in out.texts]
    nll = continuation_nll(model, prompt_ids, out.token_ids)      # (n,) mean NLL per generated token

Intervals over prompts: :mod:`decoding.bootstrap`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_WORD = re.compile(r"\w")


def word_count(text: str) -> int:
    """Whitespace-separated pieces of ``text`` holding a letter or digit ("Paris." is one word, "-" none)."""
    return sum(1 for piece in text.split() if _WORD.search(piece))


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word, ignoring case ("Paris." contains "paris")."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


@torch.no_grad()
def continuation_nll(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    cont_ids: Sequence[Sequence[int]],
    batch_size: int = 8,
    pad_id: int = 0,
) -> Tensor:
    """Mean negative log-likelihood (nats per token) of each continuation given its prompt.

    One forward per batch over ``prompt + continuation``, right-padded; row ``i`` scores the tokens
    ``cont_ids[i]`` only. An empty continuation gives NaN.

    Args:
        model: an HF causal LM (call it inside ``peft_model.disable_adapter()`` to score the base).
        prompt_ids: the prompts' token ids (non-empty).
        cont_ids: the continuations' token ids, one per prompt.
        batch_size: rows per forward.
        pad_id: the id written into padding (masked out).

    Returns:
        ``(n,)`` float64 tensor of per-token mean NLLs.
    """
    if len(prompt_ids) != len(cont_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(cont_ids)} continuations")
    device = next(model.parameters()).device
    out = torch.full((len(prompt_ids),), float("nan"), dtype=torch.float64)
    for b0 in range(0, len(prompt_ids), batch_size):
        rows = [
            (list(p), list(c))
            for p, c in zip(prompt_ids[b0 : b0 + batch_size], cont_ids[b0 : b0 + batch_size])
        ]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)
        for r, (p, c) in enumerate(rows):
            if not p:
                raise ValueError(
                    f"prompt {b0 + r} is empty; continuation_nll needs at least one prompt token"
                )
            ids[r, : len(p) + len(c)] = torch.tensor(p + c)
            mask[r, : len(p) + len(c)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        for r, (p, c) in enumerate(rows):
            if not c:
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=logits.device)  # predicting c
            target = torch.tensor(c, device=logits.device)
            out[b0 + r] = F.cross_entropy(logits[r, pos].double(), target).item()
    return out
