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

from decoding.head_spec import parse_head_spec  # noqa: F401 - the one head-spec parser, re-exported
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


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions whose next token is an answer token.

    Args:
        labels: (B, T) with ``-100`` outside answer + eos.

    Returns:
        index (B, P) positions t (predicting token t + 1), targets (B, P), mask (B, P) of real entries;
        P is the longest answer in the batch, shorter rows are padded with position 0 and mask False.
    """
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    counts = scored.sum(1)
    P = int(counts.max())
    order = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :P]  # scored positions first
    mask = torch.arange(P, device=labels.device)[None, :] < counts[:, None]  # (B, P)
    index = torch.where(mask, order, torch.zeros_like(order))
    targets = torch.where(mask, labels[:, 1:].gather(1, order), torch.zeros_like(order))
    return index, targets, mask


@torch.no_grad()
def head_exact(model, batch: dict[str, torch.Tensor], head, reference=None) -> torch.Tensor:
    """Exact recall (B,) of each fact when greedy decoding uses ``head`` (teacher-forced, one pass).

    Args:
        model: HF causal LM (possibly peft-wrapped / with memory experts).
        batch: a facts batch (``input_ids``, ``attention_mask``, ``labels``).
        head: a :class:`decoding.head.Head`.
        reference: context-manager factory that switches the model's adaptation off; needed by DeRa.
    """
    from decoding.layers import layer_logits_at, model_info

    num_layers, tied = model_info(model)
    layers = head.required_layers(num_layers, tied)
    index, targets, mask = answer_positions(batch["labels"])
    args = (batch["input_ids"], batch["attention_mask"], index, layers)
    x = layer_logits_at(model, *args)  # early (C, B, P, V), mature (B, P, V)
    ref = None
    if head.uses_ref:
        if reference is None:
            raise ValueError(f"{head!r} needs a reference model: use a LoRA or memory-expert module")
        with reference():
            ref = layer_logits_at(model, *args)
    hit = (head(x, ref).argmax(-1) == targets) | ~mask  # (B, P)
    return hit.all(1)
