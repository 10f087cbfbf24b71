"""Per-token log-probabilities of greedy outputs, recorded while generating (no second forward).

DeRa's generation loop already computes, at every step, the aligned model's and the reference model's
mature logits at the last position; the log-probability each of them gives to the chosen token is one
gather away. :class:`RecordLogprobs` wraps any head and records them::

    rec = RecordLogprobs(DeRa(0.5))
    out = generate(peft_model, tok, prompts, head=rec, ref_model=peft_model.disable_adapter)
    nll_tuned, nll_base = rec.mean_nll(out.token_ids)     # (B,) nats per generated token, each

It records the log-probability of ``argmax(head scores)``: the generated token under **greedy decoding
without logits processors** (no repetition penalty, no sampling). :meth:`RecordLogprobs.mean_nll`
checks that the recorded picks are the generated tokens and refuses otherwise. The values equal
:func:`decoding.answer_metrics.continuation_nll` (a teacher-forced forward over prompt + output) up to
floating-point rounding; ``tests/decoding/test_logprob_recorder.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from decoding.head import Head
from decoding.layers import LayerLogits


class RecordLogprobs(Head):
    """Wrap ``head``; per step, record the chosen token and its log-probability under each pass.

    Args:
        head: the head that decides (Greedy, DeRa, ...). Use a new recorder for each ``generate`` call.
    """

    name = "record_logprobs"

    def __init__(self, head: Head) -> None:
        self.head = head
        self.uses_ref = head.uses_ref
        self._picks: list[Tensor] = []  # per step (B,)
        self._aligned: list[Tensor] = []  # per step (B,) float64
        self._ref: list[Tensor] = []

    def required_layers(self, num_layers: int, tied: bool = False) -> tuple[int, ...]:
        return self.head.required_layers(num_layers, tied)

    def scores(self, x: LayerLogits, ref: LayerLogits | None) -> Tensor:
        s = self.head.scores(x, ref)  # (B, V')
        pick = s.argmax(-1, keepdim=True)  # (B, 1)
        self._picks.append(pick.squeeze(-1))
        self._aligned.append(x.mature.double().log_softmax(-1).gather(-1, pick).squeeze(-1))
        if ref is not None:
            self._ref.append(ref.mature.double().log_softmax(-1).gather(-1, pick).squeeze(-1))
        return s

    def mean_nll(self, token_ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor | None]:
        """Mean NLL per generated token of each row, under the aligned pass and under the reference.

        Args:
            token_ids: ``generate(...).token_ids`` of the call this recorder decided.

        Returns:
            ``(aligned (B,), reference (B,) or None)`` float64; NaN for a row with no new token.

        Raises:
            ValueError: the generated tokens are not the recorded argmax picks (sampling, a penalty, or
                a recorder reused across calls).
        """
        if not self._picks:
            raise ValueError("nothing recorded: pass this recorder as generate(head=...) first")
        picks = torch.stack(self._picks, 1).cpu()  # (B, T)
        if picks.shape[0] != len(token_ids):
            raise ValueError(f"recorded {picks.shape[0]} rows but got token ids of {len(token_ids)}")
        out = []
        for steps in (self._aligned, self._ref):
            if not steps:
                out.append(None)
                continue
            logp = torch.stack(steps, 1).cpu()  # (B, T)
            nll = torch.full((len(token_ids),), float("nan"), dtype=torch.float64)
            for r, ids in enumerate(token_ids):
                if picks[r, : len(ids)].tolist() != list(ids):
                    raise ValueError(
                        f"row {r}: the generated tokens are not the recorded greedy picks; RecordLogprobs "
                        "needs greedy decoding without penalties and a new recorder per generate call"
                    )
                if ids:
                    nll[r] = -logp[r, : len(ids)].mean()
            out.append(nll)
        return out[0], out[1]
