"""DoLa against a literal implementation of docs/algorithms/decoding.md, 'DoLa' (HF v4.43-v4.52)."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_oracles import PROMPTS, dola_js, dola_reference_step, reference_generate

from decoding.dola import DoLa, dola_candidates
from decoding.generate import generate

BUCKETS = [  # (N, tied, low, high): the table in docs/algorithms/decoding.md
    (32, False, range(0, 16, 2), range(16, 32, 2)),
    (40, False, range(0, 20, 2), range(20, 40, 2)),
    (80, False, range(0, 20, 2), range(60, 80, 2)),
    (24, True, range(2, 12, 2), range(12, 24, 2)),
    (12, False, [0, 2, 4], [6, 8, 10]),
    (12, True, [2, 4], [6, 8, 10]),
    (4, False, [0], [2]),
    (4, True, [2], [2]),
]


@pytest.mark.parametrize("n,tied,low,high", BUCKETS)
def test_buckets(n, tied, low, high):
    assert dola_candidates("low", n, tied) == tuple(low)
    assert dola_candidates("high", n, tied) == tuple(high)


def test_explicit_lists_and_errors():
    assert dola_candidates([0, 3, 4], 4, False) == (0, 3)  # the mature layer is dropped, as HF
    with pytest.raises(ValueError, match=r"dola_layers \[10\] are out of range"):
        dola_candidates([0, 10], 4, False)
    with pytest.raises(ValueError, match="negative"):
        dola_candidates([-1, 2], 4, False)
    with pytest.raises(ValueError, match="no dola_layers below"):
        dola_candidates([4], 4, False)
    with pytest.raises(ValueError, match="'low', 'high'"):
        DoLa("middle")


def synthetic(seed=0, layers=6, rows=4, vocab=50):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(layers + 1, rows, vocab, generator=g) * 2
    t[3, 0] = t[2, 0]  # an exact tie between candidates 2 and 3 in row 0
    return t


def test_step_equals_literal_per_row():
    t = synthetic()
    head = DoLa([0, 1, 2, 3, 4, 5])
    out = head(t)
    for r in range(t.shape[1]):
        expect, js = dola_reference_step(t[:-1, r], t[-1, r], list(range(6)))
        chosen = int(head.last_choice[r])
        assert js[chosen] == pytest.approx(float(js.max()), rel=1e-5)  # any member of a tie
        base = t[chosen, r].log_softmax(-1)
        s_n = t[-1, r].log_softmax(-1)
        low = s_n < s_n.max() + math.log(0.1)
        manual = torch.where(low, -float("inf"), s_n) - torch.where(low, -1e-3, base)
        torch.testing.assert_close(out[r], manual)
        if chosen == int(js.argmax()):
            torch.testing.assert_close(out[r], expect)


def test_batch_mean_picks_one_layer():
    t = synthetic(1)
    head = DoLa([0, 2, 4], batch_mean=True)
    head(t)
    js = torch.stack([dola_js(t[-1, r], t[[0, 2, 4], r]) for r in range(t.shape[1])], 1)  # (C, R)
    assert (head.last_choice == [0, 2, 4][int(js.mean(1).argmax())]).all()


def test_mc_scores_literal():
    t = synthetic(2)
    for rt, post in [(0.0, False), (0.1, True)]:
        head = DoLa([0, 2, 4], relative_top=rt)
        got = head.mc_scores(t, post_softmax=post)
        for r in range(t.shape[1]):
            m = [0, 2, 4][int(dola_js(t[-1, r], t[[0, 2, 4], r]).argmax())]
            final = t[-1, r].log_softmax(-1)
            diff = final - t[m, r].log_softmax(-1)
            if post:
                diff = diff.log_softmax(-1)
            if rt > 0:
                diff = torch.where(final < final.max() + math.log(rt), -1000.0, diff)
            torch.testing.assert_close(got[r], diff)


@pytest.mark.parametrize("name,layers", [("llama", [0, 1, 2, 3]), ("gpt2", "low"), ("llama", "high")])
def test_generation_matches_reference_loop(name, layers, request):
    model, tok = request.getfixturevalue(name)
    cands = list(dola_candidates(layers, 4, name == "gpt2"))
    for prompt in PROMPTS[:2]:
        ids = tok(prompt, return_tensors="pt").input_ids
        step = lambda e, m: dola_reference_step(e, m, cands)[0]  # noqa: E731
        expect = reference_generate(model, ids, cands, step, 10, 1.2)
        got = generate(model, tok, prompt, head=DoLa(layers), max_new_tokens=10, repetition_penalty=1.2)
        assert got.token_ids[0] == expect
