"""Generation: batch rows == batch 1, HF greedy parity, the HF custom_generate entry, stops, sampling."""

from __future__ import annotations

import pytest
import torch
from decoding_oracles import PROMPTS

from decoding.dera import DeRa
from decoding.dola import DoLa
from decoding.generate import generate, hf_custom_generate
from decoding.greedy import Greedy
from decoding.head import make_head
from decoding.sled import SLED

HEADS = {
    "greedy": lambda: Greedy(),
    "sled": lambda: SLED(evolution_rate=5.0),
    "dola": lambda: DoLa([0, 1, 2, 3]),
    "dera": lambda: DeRa(2.0),
    "dera+sled": lambda: DeRa(0.5, head=SLED()),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_batch_rows_equal_batch_one(name, llama, llama2):
    model, tok = llama
    ref = llama2 if name.startswith("dera") else None
    kw = dict(max_new_tokens=8, ref_model=ref, repetition_penalty=1.2)
    batched = generate(model, tok, PROMPTS, head=HEADS[name](), **kw)
    single = [generate(model, tok, p, head=HEADS[name](), **kw).token_ids[0] for p in PROMPTS]
    assert batched.token_ids == single
    if name != "greedy":
        assert batched.token_ids != generate(model, tok, PROMPTS, head=Greedy(), **kw).token_ids


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_equals_hf_generate(name, request):
    model, tok = request.getfixturevalue(name)
    for prompt in PROMPTS[:2]:
        ids = tok(prompt, return_tensors="pt").input_ids
        hf = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
        new = hf[0, ids.shape[1] :].tolist()
        assert generate(model, tok, prompt, max_new_tokens=10).token_ids[0] == new[: len(new)]


def test_hf_custom_generate_entry(llama):
    model, tok = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        custom_generate=hf_custom_generate,
        head=SLED(),
        max_new_tokens=8,
        repetition_penalty=1.2,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    expect = generate(model, tok, PROMPTS[0], head=SLED(), max_new_tokens=8, repetition_penalty=1.2)
    assert out[0, ids.shape[1] :].tolist() == expect.token_ids[0]


def test_stop_strings(llama):
    model, tok = llama
    full = generate(model, tok, PROMPTS[0], max_new_tokens=12)
    text = full.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = generate(model, tok, PROMPTS[0], max_new_tokens=12, stop_strings=[stop])
    assert cut.texts[0] == text[: text.index(stop)]
    assert len(cut.token_ids[0]) < len(full.token_ids[0])
    assert full.token_ids[0][: len(cut.token_ids[0])] == cut.token_ids[0]
    # in a batch the row that stops early gets no trailing pad ids; rows equal their batch-1 runs
    batch = generate(model, tok, PROMPTS[:2], max_new_tokens=12, stop_strings=[stop])
    single = [generate(model, tok, p, max_new_tokens=12, stop_strings=[stop]) for p in PROMPTS[:2]]
    assert batch.token_ids == [s.token_ids[0] for s in single]
    assert batch.texts == [s.texts[0] for s in single]


def test_sampling(llama):
    model, tok = llama
    a = generate(model, tok, PROMPTS, head=SLED(), do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)
    b = generate(model, tok, PROMPTS, head=SLED(), do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)
    assert a.token_ids == b.token_ids
    greedy = generate(model, tok, PROMPTS, head=SLED(), max_new_tokens=8)
    top1 = generate(model, tok, PROMPTS, head=SLED(), do_sample=True, top_k=1, seed=1, max_new_tokens=8)
    assert top1.token_ids == greedy.token_ids
    many = generate(model, tok, PROMPTS, do_sample=True, temperature=3.0, seed=2, max_new_tokens=8)
    assert many.token_ids != generate(model, tok, PROMPTS, max_new_tokens=8).token_ids


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head 'beam'; known heads: greedy, dola, sled, dera"):
        make_head("beam")


def test_hf_custom_generate_dera(llama, llama2):
    model, tok = llama
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        custom_generate=hf_custom_generate,
        head=DeRa(0.0),
        ref_model=llama2,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    assert out[0, ids.shape[1] :].tolist() == generate(llama2, tok, PROMPTS[1], max_new_tokens=6).token_ids[0]
