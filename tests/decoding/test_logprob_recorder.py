"""NLLs recorded while generating == a teacher-forced forward over prompt + output (continuation_nll)."""

from __future__ import annotations

import pytest
import torch
from decoding_oracles import PROMPTS, random_lora

from decoding.answer_metrics import continuation_nll
from decoding.dera import DeRa
from decoding.generate import generate
from decoding.greedy import Greedy
from decoding.logprob_recorder import RecordLogprobs


@pytest.fixture(scope="module")
def peft_llama(llama):
    """The sharp tiny Llama with a random (non-zero) LoRA on q and v: adapter on != adapter off."""
    model, tok = llama
    return random_lora(model), tok


def _prompt_ids(tok) -> list[list[int]]:
    return [tok(p).input_ids for p in PROMPTS]


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_dera_recorded_nll_equals_teacher_forced(peft_llama, lam):
    model, tok = peft_llama
    rec = RecordLogprobs(DeRa(lam))
    out = generate(model, tok, PROMPTS, head=rec, ref_model=model.disable_adapter, max_new_tokens=8)
    plain = generate(model, tok, PROMPTS, head=DeRa(lam), ref_model=model.disable_adapter, max_new_tokens=8)
    assert out.token_ids == plain.token_ids  # recording does not change the decision
    tuned, base = rec.mean_nll(out.token_ids)
    expect_tuned = continuation_nll(model, _prompt_ids(tok), out.token_ids)
    with model.disable_adapter():
        expect_base = continuation_nll(model, _prompt_ids(tok), out.token_ids)
    torch.testing.assert_close(tuned, expect_tuned, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(base, expect_base, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tuned, base)


def test_greedy_records_one_pass(peft_llama):
    model, tok = peft_llama
    rec = RecordLogprobs(Greedy())
    out = generate(model, tok, PROMPTS, head=rec, max_new_tokens=6)
    nll, ref = rec.mean_nll(out.token_ids)
    assert ref is None
    torch.testing.assert_close(
        nll, continuation_nll(model, _prompt_ids(tok), out.token_ids), rtol=1e-4, atol=1e-4
    )


def test_refuses_tokens_it_did_not_pick(peft_llama):
    model, tok = peft_llama
    rec = RecordLogprobs(Greedy())
    with pytest.raises(ValueError, match="nothing recorded"):
        rec.mean_nll([[1]])
    out = generate(model, tok, PROMPTS, head=rec, max_new_tokens=24, repetition_penalty=50.0)
    plain = generate(model, tok, PROMPTS, max_new_tokens=24).token_ids
    assert out.token_ids != plain  # the penalty changed some picks after the head
    with pytest.raises(ValueError, match="not the recorded greedy picks"):
        rec.mean_nll(out.token_ids)
