"""Interference metrics on the quick tiny model: self-comparison is exact, a perturbed copy is not."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from memexp_helpers import QUICK_MODEL

from decoding.errors import UserError
from decoding.models import load_causal_lm, load_tokenizer
from memexp.interference import (
    Measurement,
    compare,
    load_questions,
    measure,
    ratio_interval,
    real_text_nll,
    sample_mc_items,
)
from memexp.real_text import DATA, extract_prose, load_real_text, real_text_chunks

SMALL = {"chunk_len": 32, "max_chunks": 6, "mc_sample": 4, "max_new_tokens": 6, "batch_size": 4}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_causal_lm(QUICK_MODEL).eval(), load_tokenizer(QUICK_MODEL)


@pytest.fixture(scope="module")
def base(tiny):
    model, tok = tiny
    return measure(model, tok, questions=load_questions()[:6], progress=False, **SMALL)


def test_shipped_corpus_is_prose():
    paragraphs = load_real_text()
    text = "\n".join(paragraphs)
    assert len(paragraphs) > 200 and len(text) > 80_000  # ~21.8k SmolLM2 tokens
    assert not any(">>>" in p or "::=" in p or p.startswith(" ") for p in paragraphs)
    assert len(load_questions()) >= 50


def test_shipped_data_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = DATA.parents[1] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["memexp"]
    shipped = list(DATA.iterdir())
    assert {f.name for f in shipped} >= {"real_text.txt", "real_text_LICENSE.txt", "general_questions.txt"}
    for file in shipped:
        assert any(file.relative_to(DATA.parent).match(g) for g in globs), file


def test_extract_prose_keeps_paragraphs_and_drops_code_and_headings():
    prose = "Assignment statements bind names to values. " * 6
    topic = f"Heading\n*******\n\n{prose.strip()}\n\n   x = 1\n   y = 2\n\nShort one.\n\n>>> {prose}"
    assert extract_prose({"t": topic}) == [prose.strip()]


def test_chunks_have_equal_length(tiny):
    _, tok = tiny
    chunks = real_text_chunks(tok, chunk_len=16, max_chunks=5)
    assert len(chunks) == 5 and {len(c) for c in chunks} == {16}
    with pytest.raises(UserError, match="chunk_len"):
        real_text_chunks(tok, chunk_len=1)


def test_a_corpus_shorter_than_one_chunk_is_named(tiny, tmp_path):
    _, tok = tiny
    short = tmp_path / "retain.txt"
    short.write_text("One short paragraph of prose, far fewer tokens than a chunk.\n")
    with pytest.raises(UserError, match=r"retain\.txt has \d+ tokens, fewer than chunk_len=4096"):
        real_text_chunks(tok, chunk_len=4096, path=short)


def test_real_text_nll_equals_hf_loss_per_chunk(tiny):
    model, tok = tiny
    chunks = real_text_chunks(tok, chunk_len=24, max_chunks=5)
    batched = real_text_nll(model, chunks, batch_size=2, progress=False)
    with torch.no_grad():
        plain = [model(input_ids=torch.tensor([c]), labels=torch.tensor([c])).loss.item() for c in chunks]
    assert batched == pytest.approx(plain, abs=1e-4)


def test_mc_sample_is_seeded_and_sized():
    a, b = sample_mc_items(10, seed=3), sample_mc_items(10, seed=3)
    assert [i.question for i in a] == [i.question for i in b] and len(a) == 10
    assert [i.question for i in a] != [i.question for i in sample_mc_items(10, seed=4)]


def test_model_against_itself_is_exactly_one(tiny, base):
    model, tok = tiny
    again = measure(model, tok, questions=load_questions()[:6], progress=False, **SMALL)
    result = compare(base, again, n_boot=200)
    for key in ("real_text_nll", "mc1", "mc2"):
        if result[key]["before"] == 0:  # a tiny model may get no MC1 question right: no ratio
            continue
        assert result[key]["ratio"] == 1.0 and result[key]["low"] == result[key]["high"] == 1.0, key
    assert result["identical_answers"]["fraction"] == 1.0
    assert len(base.real_text_nll) == 6 and len(base.mc2) == 4 and len(base.answers) == 6


def test_perturbed_model_differs(tiny, base):
    model, tok = tiny
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.std().clamp_min(1e-3))
    after = measure(noisy, tok, questions=load_questions()[:6], progress=False, **SMALL)
    result = compare(base, after, n_boot=200)
    nll = result["real_text_nll"]
    # a tiny model's NLL on English prose sits near log(vocab) either way: only "not 1" is meaningful
    assert abs(nll["ratio"] - 1.0) > 1e-4 and nll["low"] < nll["high"]
    assert result["mc2"]["ratio"] != 1.0
    assert result["identical_answers"]["fraction"] < 1.0


def test_measurement_round_trips_through_json(base):
    back = Measurement.from_dict(json.loads(json.dumps(base.to_dict())))
    assert back == base and set(back.seconds) == {"real_text_nll", "factual_mc", "greedy_answers"}


def test_compare_refuses_other_settings(base):
    other = copy.deepcopy(base)
    other.settings["mc_seed"] = 99
    with pytest.raises(UserError, match="mc_seed"):
        compare(base, other)


def test_ratio_interval_known_values():
    r = ratio_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], n_boot=100)
    assert (
        r["ratio"] == pytest.approx(2.0)
        and r["low"] == pytest.approx(2.0)
        and r["high"] == pytest.approx(2.0)
    )
    inf = ratio_interval([1.0, 0.0, 0.0], [1.0, 1.0, 1.0], n_boot=400)
    assert inf["ratio"] == 3.0 and inf["high"] == float("inf")  # resamples without the 1: x / 0
    zero = ratio_interval([0.0, 0.0], [1.0, 0.0], n_boot=10)
    assert zero["ratio"] != zero["ratio"] and zero["after"] == 0.5  # NaN: no ratio to a zero mean
