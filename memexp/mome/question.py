"""Which tokens of an input are the question: what the router pools over when no ``question_mask`` is given.

Facts are trained as ``prompt + answer`` where the prompt is ``template.format(question=...)``
(:mod:`memexp.data`), so every trained prompt ends with the template's tail (``"\\nA:"`` by default).
:class:`~memexp.mome.tuning.MoMETuning` records those tail ids as ``MoMEConfig.question_end``; an input is
then split at the first occurrence::

    Q: What is the code of Varo Tesk?\\nA: K7Q2ZP0M</s>
    |<------------- question ------------>|<- answer ->|

So a forward over prompt + answer (a log-likelihood scorer), the prompt alone (cached generation) and
prompt + generated tokens (generation without a cache) all route on the same tokens. An input whose
question end cannot be found is refused (:func:`find_question`), never routed over its answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decoding.errors import UserError
from memexp.data import IGNORE_INDEX


def mask_after_first(input_ids: torch.Tensor, attended: torch.Tensor, end: Sequence[int]) -> torch.Tensor:
    """Attended tokens up to and including the first occurrence of ``end`` in each row.

    Args:
        input_ids: ``(B, T)``.
        attended: ``(B, T)`` bool, the real (non-padding) tokens.
        end: the ids that end a question.

    Returns:
        ``(B, T)`` bool; a row without ``end`` is all False.
    """
    bsz, seq = input_ids.shape
    m = len(end)
    if seq < m:
        return torch.zeros_like(attended)
    pattern = torch.tensor(list(end), device=input_ids.device)
    windows = input_ids.unfold(1, m, 1)  # (B, T-m+1, m)
    real = attended.unfold(1, m, 1).all(-1)  # (B, T-m+1)
    hit = (windows == pattern).all(-1) & real  # (B, T-m+1): an occurrence starts here
    pos = torch.arange(seq - m + 1, device=input_ids.device).expand(bsz, -1)
    first = torch.where(hit, pos, seq).amin(1)  # (B,) start of the first occurrence (seq: none)
    last = first + m - 1  # (B,) its last token
    upto = torch.arange(seq, device=input_ids.device)[None, :] <= last[:, None]  # (B, T)
    return upto & attended & (first < seq)[:, None]


def mask_before_labels(labels: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """Attended tokens before the first labelled one (``labels`` are ``-100`` on the prompt).

    Returns:
        ``(B, T)`` bool; all False in a row whose first attended token is labelled (e.g.
        ``labels=input_ids``: the labels then tell nothing about the question).
    """
    labelled = (labels != IGNORE_INDEX) & attended  # (B, T)
    before = labelled.long().cumsum(1) == 0  # (B, T): no labelled token up to here
    found = labelled.any(1, keepdim=True)
    return before & attended & found


def find_question(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    question_end: Sequence[int] | None = None,
) -> torch.Tensor:
    """The question tokens of a batch given without ``question_mask``.

    Per row: up to and including the first ``question_end`` (the trained prompt format); else, with
    ``labels``, the tokens before the first labelled one.

    Args:
        input_ids: ``(B, T)``.
        attention_mask: ``(B, T)``; all tokens when None.
        labels: ``(B, T)`` with ``-100`` outside the answer, or None.
        question_end: ``MoMEConfig.question_end``.

    Returns:
        ``(B, T)`` bool question mask.

    Raises:
        UserError: a row whose question cannot be told from the rest.
    """
    attended = (
        torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    )
    mask = torch.zeros_like(attended)
    if question_end:
        mask = mask_after_first(input_ids, attended, question_end)
    if labels is not None and labels.shape == input_ids.shape:
        missing = ~mask.any(1, keepdim=True)  # (B, 1)
        mask = torch.where(missing, mask_before_labels(labels, attended), mask)
    unknown = (~mask.any(1)).nonzero().flatten().tolist()
    if unknown:
        how = (
            f"its tokens do not contain the question end {list(question_end)} of the trained prompt format"
            if question_end
            else "this model records no question end (MoMEConfig.question_end) and no labels mark the answer"
        )
        raise UserError(
            f"cannot tell the question from the rest of input row {unknown[0]} ({how}): pass "
            "question_mask=(B, T) bool marking the question tokens, or format the input like the "
            "trained prompts"
        )
    return mask


def common_question_end(prompts: Sequence[Sequence[int]], tail_ids: Sequence[int]) -> list[int] | None:
    """The ids that end every prompt, at most as many as the template tail has on its own.

    Args:
        prompts: token ids of the trained prompts.
        tail_ids: the template's text after ``{question}`` tokenised alone (its length caps the result,
            so a suffix that the questions happen to share, e.g. ``"?"``, is not taken as well).

    Returns:
        the common suffix (tokenisation in context, which may merge the tail with the question's last
        characters), or None when the prompts share none or the template has no tail.
    """
    if not prompts or not tail_ids:
        return None
    common = list(prompts[0])
    for ids in prompts[1:]:
        n = 0
        while n < min(len(common), len(ids)) and common[-1 - n] == ids[-1 - n]:
            n += 1
        common = common[len(common) - n :]
        if not common:
            return None
    return common[-len(tail_ids) :]
