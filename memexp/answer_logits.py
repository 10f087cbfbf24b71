"""The answer loss needs logits only where a label follows: evaluate the LM head there and nowhere else.

::

    mask = answer_positions(batch["labels"])                          # (B, T) bool
    logits = model(input_ids, attention_mask=attn, logits_to_keep=mask).logits   # (N, V), N = mask.sum()
    nll = summed_answer_nll(logits, batch["labels"], mask)            # (B,) summed answer NLL per fact

Position ``t`` predicts token ``t + 1``, so ``mask[:, t]`` is true where ``labels[:, t + 1] != -100``.
HF causal LMs (transformers >= 5) accept a boolean ``(B, T)`` ``logits_to_keep`` and return the kept
rows flattened, ``(N, V)``. With a 49k-token vocabulary and short answers this skips most of the LM
head's GEMM and the full-vocabulary softmax of every prompt position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memexp.data import IGNORE_INDEX


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: the positions whose logits predict a labelled token (the last one never does)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def answer_targets(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N,)`` the tokens predicted at the ``N`` true positions of ``mask``, in row-major order."""
    return labels[:, 1:][mask[:, :-1]]


def answer_token_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N,)`` NLL (nats, float32) of each answer token from the ``(N, V)`` kept logits."""
    return F.cross_entropy(logits.float(), answer_targets(labels, mask), reduction="none")


def summed_answer_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` summed answer NLL per example from the ``(N, V)`` logits kept at ``mask``."""
    rows = mask.nonzero()[:, 0]  # (N,) the example of each kept position
    token = answer_token_nll(logits, labels, mask)  # (N,)
    return torch.zeros(labels.shape[0], device=token.device).index_add_(0, rows, token)
