"""HF's ``model.generate`` with decoding heads: the custom_generate callable, the wrapper and the folder.

Oracle: HF's own ``model.generate`` on the same model. With the greedy head the decoding loop must give
HF's tokens exactly -- also when sampling (same seed, same warpers applied once, same RNG calls), with
``stop_strings``, ``max_time`` and a streamer (the same ``put`` / ``end`` calls).
"""

from __future__ import annotations

import sys

import pytest
import torch
from decoding_oracles import PROMPTS

from decoding.dera import DeRa
from decoding.generate import generate as native_generate
from decoding.greedy import Greedy
from decoding.hf_generate import custom_generate_dir, generate, hf_custom_generate
from decoding.sled import SLED


class RecordingStreamer:
    """Records what a generation loop hands a streamer."""

    def __init__(self) -> None:
        self.calls: list = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(("put", value.tolist()))

    def end(self) -> None:
        self.calls.append(("end",))


def _batch(tok, prompts=PROMPTS[:2]):
    return tok(prompts, return_tensors="pt", padding=True, padding_side="left")


@pytest.mark.parametrize("warp", [dict(temperature=0.5, top_p=0.5), dict(top_p=0.5, top_k=0), dict()])
def test_sampling_equals_hf_sampling(warp, llama):
    """Temperature / top-k / top-p are applied once (HF puts them into ``logits_processor``)."""
    model, tok = llama
    enc = _batch(tok)
    kw = dict(do_sample=True, max_new_tokens=8, pad_token_id=tok.pad_token_id, **warp)
    runs = []
    for seed in range(4):
        torch.manual_seed(seed)
        hf = model.generate(**enc, **kw)
        torch.manual_seed(seed)
        callable_ = model.generate(**enc, custom_generate=hf_custom_generate, head=Greedy(), **kw)
        torch.manual_seed(seed)
        wrapper = generate(model, **enc, head="greedy", **kw)
        assert callable_.tolist() == hf.tolist()
        assert wrapper.tolist() == hf.tolist()
        runs.append(hf.tolist())
    assert len({str(r) for r in runs}) > 1  # the seeds matter


def test_greedy_sled_and_penalty_equal_the_native_loop(llama):
    model, tok = llama
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    kw = dict(max_new_tokens=8, repetition_penalty=1.2, do_sample=False, pad_token_id=tok.pad_token_id)
    out = model.generate(ids, custom_generate=hf_custom_generate, head=SLED(), **kw)
    expect = native_generate(model, tok, PROMPTS[0], head=SLED(), max_new_tokens=8, repetition_penalty=1.2)
    assert out[0, ids.shape[1] :].tolist() == expect.token_ids[0]
    assert generate(model, ids, head="sled", **kw).tolist() == out.tolist()  # option strings work too


def test_dera_reference(llama, llama2):
    model, tok = llama
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    out = model.generate(
        ids,
        custom_generate=hf_custom_generate,
        head=DeRa(0.0),
        ref_model=llama2,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    expect = native_generate(llama2, tok, PROMPTS[1], max_new_tokens=6).token_ids[0]
    assert out[0, ids.shape[1] :].tolist() == expect


def test_streamer_stop_strings_and_max_time_as_hf(llama):
    model, tok = llama
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    hf_stream, our_stream = RecordingStreamer(), RecordingStreamer()
    hf = model.generate(ids, max_new_tokens=8, streamer=hf_stream, **kw)
    ours = generate(model, ids, max_new_tokens=8, streamer=our_stream, **kw)
    assert ours.tolist() == hf.tolist()
    assert our_stream.calls == hf_stream.calls  # the prompt, one put per token, then end
    assert len(hf_stream.calls) == 1 + 8 + 1

    text = tok.decode(hf[0, ids.shape[1] :])
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    hf = model.generate(ids, max_new_tokens=12, stop_strings=[stop], tokenizer=tok, **kw)
    ours = generate(model, ids, max_new_tokens=12, stop_strings=[stop], tokenizer=tok, **kw)
    assert ours.tolist() == hf.tolist()
    assert hf.shape[1] < ids.shape[1] + 12  # the stop string did stop it
    with pytest.raises(ValueError, match="tokenizer="):
        generate(model, ids, max_new_tokens=4, stop_strings=[stop], **kw)

    # max_time: both stop after the first step (any step takes longer than a microsecond)
    hf = model.generate(ids, max_new_tokens=12, max_time=1e-6, **kw)
    ours = generate(model, ids, max_new_tokens=12, max_time=1e-6, **kw)
    assert ours.tolist() == hf.tolist() and hf.shape[1] == ids.shape[1] + 1


@pytest.fixture
def private_modules_cache(tmp_path, monkeypatch):
    """HF copies a custom_generate file into its modules cache: keep that inside the test's folder."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path / "hf_modules"


@pytest.mark.parametrize("spec, head", [("sled", SLED()), ("greedy", Greedy())])
def test_custom_generate_folder(spec, head, llama, private_modules_cache):
    model, tok = llama
    enc = _batch(tok)
    out = model.generate(
        **enc,
        custom_generate=custom_generate_dir(),
        trust_remote_code=True,
        head=spec,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    expect = native_generate(model, tok, PROMPTS[:2], head=head, max_new_tokens=8)
    new = out[:, enc.input_ids.shape[1] :].tolist()
    assert [row[: len(e)] for row, e in zip(new, expect.token_ids)] == expect.token_ids
    assert any(private_modules_cache.rglob("generate.py"))  # HF really loaded the folder's file


def test_custom_generate_folder_needs_trust_remote_code(llama, private_modules_cache, monkeypatch):
    model, tok = llama
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    monkeypatch.setattr("builtins.input", lambda *_: "n")  # HF asks on a terminal; answer no
    with pytest.raises(ValueError, match="trust_remote_code"):
        model.generate(ids, custom_generate=custom_generate_dir(), head="sled", max_new_tokens=2)
