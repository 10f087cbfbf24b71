"""SLED: the fast closed-form head against a literal reference step (materialised L x k x V gradients)."""

from __future__ import annotations

import pytest
import torch
from decoding_oracles import PROMPTS, reference_generate, sled_reference_step

from decoding.generate import generate
from decoding.greedy import Greedy
from decoding.sled import SLED


def synthetic(seed: int = 0, layers: int = 5, rows: int = 3, vocab: int = 200) -> torch.Tensor:
    """(layers + 1, rows, V) logits; layer 0 is nearly one-hot on the mature top-1 token of each row."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(layers + 1, rows, vocab, generator=g) * 3
    top = t[-1].argmax(-1)  # (rows,)
    t[0] = torch.randn(rows, vocab, generator=g) * 0.1
    t[0, torch.arange(rows), top] = 40.0  # p_j = 1 - ~1e-15: the fp32 cancellation case
    t[1, 1] = t[-1, 1] * 1.0001  # an almost-mature layer
    return t


@pytest.mark.parametrize("op_t,scale,lb", [(1, 10, -1000.0), (10, 50, -100.0), (1, 200, -2500.0)])
def test_fast_equals_literal_reference(op_t, scale, lb):
    t = synthetic()
    head = SLED(evolution_rate=2.0, evolution_scale=scale, evolution_lower_bound=lb, op_T=op_t)
    fast = head(t)  # (rows, V)
    for r in range(t.shape[1]):
        ref = sled_reference_step(t[:-1, r], t[-1, r], 2.0, scale, lb, op_t)
        on_t = ref != lb
        torch.testing.assert_close(fast[r][on_t], ref[on_t], rtol=1e-4, atol=1e-4)
        assert torch.equal(fast[r][~on_t], ref[~on_t])
        assert int(fast[r].argmax()) == int(ref.argmax())


def test_properties():
    t = synthetic(1)
    out = SLED(evolution_scale=10)(t)
    top = torch.softmax(t[-1], -1).topk(10).indices
    assert torch.isin(out.argmax(-1), top).all()
    off = torch.ones_like(out, dtype=torch.bool).scatter_(-1, top, False)
    assert (out[off] == -1000.0).all()
    zero = SLED(evolution_rate=0.0, evolution_scale=10)(t)
    assert torch.equal(zero.gather(-1, top), t[-1].gather(-1, top))
    # every early layer equal to the mature one: P_lat = 0, yet z - alpha * softmax(z) still applies
    same = t[-1].expand(4, -1, -1).clone()
    out = SLED(evolution_rate=2.0, evolution_scale=10)(same)
    expect = t[-1] - 2.0 * torch.softmax(t[-1], -1)
    torch.testing.assert_close(out.gather(-1, top), expect.gather(-1, top))


def test_batch_shapes_and_plain_tensors():
    t = synthetic(2, rows=6)
    flat = SLED()(t)
    grid = SLED()(t.reshape(t.shape[0], 2, 3, -1))  # (layers, 2, 3, V): teacher-forced (B, P) shape
    torch.testing.assert_close(grid.reshape(6, -1), flat)
    torch.testing.assert_close(SLED()(t[:, 2:3])[0], flat[2])


def test_bad_options():
    with pytest.raises(ValueError, match="evolution_scale=500 exceeds the vocabulary size 200"):
        SLED(evolution_scale=500)(synthetic())
    with pytest.raises(ValueError, match="layer index 9"):
        SLED(layers=[0, 9])(synthetic())
    with pytest.raises(ValueError, match="op_T"):
        SLED(op_T=0)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generation_matches_reference_loop(name, request):
    """Greedy SLED tokens == a no-cache, per-layer-lm_head, materialised-gradient loop (layer 0 included)."""
    model, tok = request.getfixturevalue(name)
    n = model.config.num_hidden_layers
    for prompt in PROMPTS[:2]:
        ids = tok(prompt, return_tensors="pt").input_ids
        expect = reference_generate(
            model,
            ids,
            list(range(n)),
            lambda e, m: sled_reference_step(e, m, 2.0, 10, -1000.0, 1),
            10,
            penalty=1.2,
        )
        got = generate(model, tok, prompt, head=SLED(), max_new_tokens=10, repetition_penalty=1.2)
        assert got.token_ids[0] == expect


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_rate_zero_is_greedy(name, request):
    model, tok = request.getfixturevalue(name)
    sled = generate(model, tok, PROMPTS, head=SLED(evolution_rate=0.0), max_new_tokens=8)
    greedy = generate(model, tok, PROMPTS, head=Greedy(), max_new_tokens=8)
    assert sled.token_ids == greedy.token_ids
    sled2 = generate(model, tok, PROMPTS, head=SLED(evolution_rate=5.0), max_new_tokens=8)
    assert sled2.token_ids != greedy.token_ids  # the evolution does change tokens on these models


def test_float64_reductions_agree():
    """The all-float64 variant of the three O(V) reductions gives the same P_lat as the float32 BLAS one."""
    from decoding.sled import latent_distribution

    t = synthetic(3)
    top = torch.softmax(t[-1], -1).topk(20).indices
    p32 = latent_distribution(t[:-1], t[-1], top)
    p64 = latent_distribution(t[:-1], t[-1], top, reduce_dtype=torch.float64)
    torch.testing.assert_close(p32, p64, rtol=1e-4, atol=1e-6)
