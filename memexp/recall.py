"""Per-fact answer NLL and exact recall from one teacher-forced forward pass.

Greedy exact match is decided without a generation loop: greedy decoding reproduces the answer
(its tokens, then EOS) **iff** at every answer position the argmax of the logits, given the true
prefix, is the true next token. (Induction over positions: while the prefixes agree, greedy's
next token is that argmax.) So one forward pass over ``prompt + answer`` gives the exact-match of
all facts at once; ``tests/test_recall.py`` checks this against HF ``generate``. The same holds for
any decoding head that maps the logits at a position to a token (SLED, DoLa, DeRa): pass its
scores as ``logits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memexp.data import IGNORE_INDEX


@dataclass
class AnswerStats:
    """Per-example results; all tensors have shape (B,)."""

    nll: torch.Tensor  # mean negative log-likelihood per answer token (nats)
    exact: torch.Tensor  # bool: greedy decoding reproduces answer + eos
    num_tokens: torch.Tensor  # answer tokens (eos included)


@torch.no_grad()
def answer_stats(logits: torch.Tensor, labels: torch.Tensor) -> AnswerStats:
    """Score answers under teacher forcing.

    Args:
        logits: (B, T, V) scores at every position (position t predicts token t+1).
        labels: (B, T) target ids, ``-100`` where nothing is scored.
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]  # (B, T-1, V), (B, T-1)
    mask = targets != IGNORE_INDEX  # (B, T-1)
    safe = targets.clamp_min(0)
    token_nll = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")  # (B, T-1)
    num_tokens = mask.sum(1)
    nll = (token_nll * mask).sum(1) / num_tokens.clamp_min(1)
    hit = (logits.argmax(-1) == safe) | ~mask  # (B, T-1)
    return AnswerStats(nll=nll, exact=hit.all(1) & (num_tokens > 0), num_tokens=num_tokens)
