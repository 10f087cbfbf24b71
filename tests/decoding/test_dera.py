"""DeRa: end points reproduce each model, logit mixing == log-prob mixing, extrapolation stays finite."""

from __future__ import annotations

import copy

import pytest
import torch
from decoding_oracles import PROMPTS, random_lora

from decoding.dera import DeRa
from decoding.generate import generate
from decoding.greedy import Greedy
from decoding.layers import layer_logits
from decoding.sled import SLED


def test_end_points_reproduce_each_model(llama, llama2):
    model, tok = llama
    aligned = generate(model, tok, PROMPTS, head=Greedy(), max_new_tokens=8).token_ids
    ref = generate(llama2, tok, PROMPTS, head=Greedy(), max_new_tokens=8).token_ids
    assert aligned != ref
    for lam, expect in ((1.0, aligned), (0.0, ref)):
        out = generate(model, tok, PROMPTS, head=DeRa(lam), ref_model=llama2, max_new_tokens=8)
        assert out.token_ids == expect


def test_logit_mixing_equals_logprob_mixing():
    g = torch.Generator().manual_seed(0)
    a, r = torch.randn(2, 3, 40, generator=g) * 4, torch.randn(2, 3, 40, generator=g) * 4  # (layers, B, V)
    for lam in (0.0, 0.3, 1.0, 3.0):
        mixed = DeRa(lam)(a, r)
        manual = lam * a[-1].log_softmax(-1) + (1 - lam) * r[-1].log_softmax(-1)
        torch.testing.assert_close(mixed.softmax(-1), manual.softmax(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed, lam * (a[-1] - r[-1]) + r[-1], rtol=1e-5, atol=1e-5)


def test_extrapolation_finite(llama, llama2):
    model, tok = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        x, _ = layer_logits(model, ids, [])
        r, _ = layer_logits(llama2, ids, [])
    for lam in (3.0, 10.0):
        assert torch.isfinite(DeRa(lam)(x, r)).all()
    out = generate(model, tok, PROMPTS, head=DeRa(10.0), ref_model=llama2, max_new_tokens=6)
    assert all(len(ids) > 0 for ids in out.token_ids)


def test_sled_on_mixed_logits():
    g = torch.Generator().manual_seed(1)
    a, r = torch.randn(5, 2, 60, generator=g) * 3, torch.randn(5, 2, 60, generator=g) * 3
    head = DeRa(0.7, head=SLED(evolution_scale=5))
    torch.testing.assert_close(head(a, r), SLED(evolution_scale=5)(torch.lerp(r, a, 0.7)))
    assert head.required_layers(4) == (0, 1, 2, 3)


def test_adapters_off_as_reference(llama):
    """One backbone, two passes: peft's disable_adapter() context manager is the reference."""
    model, tok = llama
    base = copy.deepcopy(model)
    peft_model = random_lora(model)
    tuned = generate(peft_model, tok, PROMPTS, max_new_tokens=8).token_ids
    plain = generate(base, tok, PROMPTS, max_new_tokens=8).token_ids
    assert tuned != plain
    off = peft_model.disable_adapter
    for lam, expect in ((0.0, plain), (1.0, tuned)):
        out = generate(peft_model, tok, PROMPTS, head=DeRa(lam), ref_model=off, max_new_tokens=8)
        assert out.token_ids == expect


def test_bad_input(llama, llama2):
    model, tok = llama
    with pytest.raises(ValueError, match="lam=-0.5 must be >= 0"):
        DeRa(-0.5)
    with pytest.raises(ValueError, match="needs ref_model"):
        generate(model, tok, "Q:", head=DeRa(0.5), max_new_tokens=2)
    other = copy.deepcopy(tok)
    other.add_tokens(["zzzunseen"])
    with pytest.raises(ValueError, match="tokenizer differs"):
        generate(model, tok, "Q:", head=DeRa(0.5), ref_model=llama2, ref_tokenizer=other, max_new_tokens=2)
    small = copy.deepcopy(llama2)
    small.resize_token_embeddings(100)
    with pytest.raises(ValueError, match=r"vocabulary \(100\) is smaller"):
        generate(model, tok, "Q:", head=DeRa(0.5), ref_model=small, max_new_tokens=2)


def test_penalty_order(llama, llama2):
    """Default: mix -> penalty; ``penalty_before_mix``: HF-processor order (penalise aligned, then mix)."""
    model, tok = llama
    kw = dict(max_new_tokens=8, repetition_penalty=1.5)
    ref_pen = generate(llama2, tok, PROMPTS, **kw).token_ids
    ref_plain = generate(llama2, tok, PROMPTS, max_new_tokens=8).token_ids
    assert ref_pen != ref_plain
    assert generate(model, tok, PROMPTS, head=DeRa(0.0), ref_model=llama2, **kw).token_ids == ref_pen
    hf_order = generate(model, tok, PROMPTS, head=DeRa(0.0), ref_model=llama2, penalty_before_mix=True, **kw)
    assert hf_order.token_ids == ref_plain  # at lam = 0 the penalised aligned logits are weighted 0
    aligned_pen = generate(model, tok, PROMPTS, **kw).token_ids
    both = generate(model, tok, PROMPTS, head=DeRa(1.0), ref_model=llama2, penalty_before_mix=True, **kw)
    assert both.token_ids == aligned_pen
