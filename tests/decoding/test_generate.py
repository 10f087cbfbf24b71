"""Generation: batch rows == batch 1, HF greedy and sampling parity, stops, sampling."""

from __future__ import annotations

import pytest
import torch
from decoding_oracles import PROMPTS

from decoding.dera import DeRa
from decoding.dola import DoLa
from decoding.generate import generate
from decoding.greedy import Greedy
from decoding.head_spec import make_head
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


@pytest.mark.parametrize("warp", [dict(temperature=0.5, top_p=0.5), dict(top_k=5, temperature=1.7)])
def test_sampling_equals_hf_sampling_token_for_token(warp, llama):
    """Same seed -> the exact tokens of HF's own sampling (same warpers, same RNG calls)."""
    model, tok = llama
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    warp = {"top_k": 0, **warp}  # HF's top_k defaults to 50
    runs = []
    for seed in range(4):
        torch.manual_seed(seed)
        hf = model.generate(**enc, do_sample=True, max_new_tokens=8, pad_token_id=tok.pad_token_id, **warp)
        ours = generate(model, tok, PROMPTS[:2], do_sample=True, seed=seed, max_new_tokens=8, **warp)
        new = hf[:, enc.input_ids.shape[1] :].tolist()
        assert [row[: len(o)] for row, o in zip(new, ours.token_ids)] == ours.token_ids
        runs.append(ours.token_ids)
    assert len({str(r) for r in runs}) > 1  # the seeds matter: this is sampling, not argmax


class _Wrapped(torch.nn.Module):
    """A model that is not an HF causal LM itself but offers one (as memexp's MoMEModel does)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def as_causal_lm(self):
        return self.inner


def test_a_model_offering_as_causal_lm_generates_through_it(llama, llama2):
    model, tok = llama
    kw = dict(max_new_tokens=6, head=DeRa(2.0))
    out = generate(_Wrapped(model), tok, PROMPTS, ref_model=_Wrapped(llama2), **kw)
    assert out.token_ids == generate(model, tok, PROMPTS, ref_model=llama2, **kw).token_ids
