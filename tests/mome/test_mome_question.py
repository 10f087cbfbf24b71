"""Routing is never silently wrong: every way of calling a MoME routes on the question, or refuses.

A tiny constructed MoME (non-zero experts) with ``question_end`` = the ids ending every prompt:
HF-style ``generate`` with and without a KV cache, a plain forward of prompt + answer (with labels, as a
log-likelihood scorer does) and the backbone called directly all give what an explicit question mask
gives; an input whose question cannot be found raises a one-line error naming ``question_mask``.
"""

from __future__ import annotations

import pytest
import torch

from decoding.errors import UserError
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.question import common_question_end, find_question, mask_after_first

END = [301, 302]  # the ids ending every trained question (like "\nA:")
GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def make(backbone, question_end=END, **kw) -> MoMEModel:
    args = dict(
        num_experts=64,
        k=4,
        rank=2,
        sites=["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.v_proj"],
        query_layer=1,
        balance="none",
        question_end=question_end,
    )
    args.update(kw)
    torch.manual_seed(0)
    model = MoMEModel(backbone, MoMEConfig(**args))
    for site in model.sites.values():
        torch.nn.init.normal_(site.B.weight, std=0.3)  # strong experts: the routed tokens matter
    return model.eval()


def prompts(n: int = 3, length: int = 5) -> torch.Tensor:
    """``(n, length + 2)`` random questions, each ended by END."""
    question = torch.randint(5, 300, (n, length), generator=torch.Generator().manual_seed(7))
    return torch.cat([question, torch.tensor(END).expand(n, -1)], dim=1)


def with_answer(prompt: torch.Tensor, answer_len: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prompt + answer, the prompt's question mask, and labels that are -100 on the prompt."""
    answer = torch.randint(5, 300, (prompt.shape[0], answer_len), generator=torch.Generator().manual_seed(8))
    ids = torch.cat([prompt, answer], dim=1)
    qmask = torch.zeros_like(ids, dtype=torch.bool)
    qmask[:, : prompt.shape[1]] = True
    labels = torch.where(qmask, torch.full_like(ids, -100), ids)
    return ids, qmask, labels


# ---- finding the question --------------------------------------------------------------------------
def test_question_ends_at_the_first_question_end_and_skips_padding():
    ids = torch.tensor([[0, 0, 9, 301, 302, 7, 301, 302], [9, 9, 9, 9, 301, 302, 5, 0]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]])
    got = find_question(ids, attn, question_end=END)
    want = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(got, want)
    # padding that happens to hold the question end is not a question end
    pad_end = torch.tensor([[301, 302, 9, 9]])
    assert not mask_after_first(pad_end, torch.tensor([[0, 0, 1, 1]]).bool(), END).any()


def test_labels_mark_the_question_when_no_question_end_is_known():
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, 7, 8]])
    assert find_question(ids, labels=labels).tolist() == [[True, True, True, False, False]]


@pytest.mark.parametrize(
    "labels, question_end, says",
    [
        (None, None, "records no question end"),
        (torch.tensor([[4, 5, 6, 7, 8]]), None, "records no question end"),  # labels = input_ids: no hint
        (None, END, r"do not contain the question end \[301, 302\]"),
    ],
)
def test_an_input_without_a_findable_question_is_refused(labels, question_end, says):
    with pytest.raises(UserError, match=f"(?s){says}.*pass question_mask"):
        find_question(torch.tensor([[4, 5, 6, 7, 8]]), labels=labels, question_end=question_end)


def test_recorded_question_end_is_the_template_tail_shared_by_every_prompt():
    trained = [[1, 40, 41, 9, 301, 302], [1, 50, 9, 301, 302], [1, 60, 61, 62, 9, 301, 302]]
    assert common_question_end(trained, tail_ids=[301, 302]) == [301, 302]  # not the shared "9" too
    merged = [[1, 40, 77, 302], [1, 50, 302]]  # the tail merged with the questions' last characters
    assert common_question_end(merged, tail_ids=[301, 302]) == [302]
    assert common_question_end(trained, tail_ids=[]) is None


# ---- every way of calling the model --------------------------------------------------------------
def test_plain_forward_of_prompt_and_answer_routes_on_the_prompt(backbone):
    model = make(backbone)
    ids, qmask, labels = with_answer(prompts())
    want = model(ids, question_mask=qmask, labels=labels)
    for scorer_labels in (labels, ids):  # answer-only labels, or labels = input_ids (HF-style)
        got = model(ids, labels=scorer_labels)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    got = model(ids)  # no labels at all
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    # routing over the whole input (the old default) would give other logits: the test can fail
    everything = model(ids, question_mask=torch.ones_like(qmask)).logits
    assert not torch.allclose(everything, want.logits)


def test_without_question_end_labels_still_find_the_question_and_nothing_else_does(backbone):
    model = make(backbone, question_end=None)
    ids, qmask, labels = with_answer(prompts())
    want = model(ids, question_mask=qmask).logits
    torch.testing.assert_close(model(ids, labels=labels).logits, want, rtol=0, atol=0)
    with pytest.raises(UserError, match="question_mask"):
        model(ids)
    with model.experts_off():  # the backbone needs no question
        model(ids)


@pytest.mark.parametrize("question_end", [END, None])
def test_generate_gives_the_same_tokens_with_and_without_the_cache(backbone, question_end):
    model = make(backbone, question_end=question_end)
    prompt = prompts()
    attn = torch.ones_like(prompt)
    cached = model.generate(prompt, attention_mask=attn, use_cache=True, **GEN)
    uncached = model.generate(prompt, attention_mask=attn, use_cache=False, **GEN)
    assert torch.equal(cached, uncached)
    seq = prompt  # oracle: greedy steps, the router always pools over the prompt only
    for _ in range(GEN["max_new_tokens"]):
        qmask = torch.zeros_like(seq, dtype=torch.bool)
        qmask[:, : prompt.shape[1]] = True
        nxt = model(seq, question_mask=qmask).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


def test_scoring_the_generated_answer_agrees_with_generation(backbone):
    """Teacher-forced argmax over prompt + generated == the generated tokens (what exact recall uses)."""
    model = make(backbone)
    prompt = prompts()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **GEN)
    p = prompt.shape[1]
    labels = out.clone()
    labels[:, :p] = -100
    logits = model(out, labels=labels).logits  # one forward of prompt + answer, no question_mask
    assert torch.equal(logits[:, p - 1 : -1].argmax(-1), out[:, p:])


@pytest.mark.parametrize("use_cache", [True, False])
def test_backbone_generate_called_directly_routes_like_mome_generate(backbone, use_cache):
    model = make(backbone)
    prompt = prompts()
    attn = torch.ones_like(prompt)
    want = model.generate(prompt, attention_mask=attn, **GEN)
    got = model.backbone.generate(prompt, attention_mask=attn, use_cache=use_cache, **GEN)
    assert torch.equal(got, want)


def test_generate_expands_the_prompt_routing_to_several_returned_sequences(backbone):
    model = make(backbone)
    prompt = prompts(n=2)
    sample = dict(max_new_tokens=6, do_sample=True, pad_token_id=0)
    torch.manual_seed(1)
    out = model.generate(prompt, num_return_sequences=2, **sample)  # (4, T): rows 2i, 2i+1 from prompt i
    torch.manual_seed(1)
    want = model.generate(prompt.repeat_interleave(2, 0), **sample)  # each prompt routed on its own
    assert torch.equal(out, want)


# ---- the routing-only pass -----------------------------------------------------------------------
def test_route_selects_what_a_full_forward_selects_without_running_the_rest(backbone):
    model = make(backbone, question_end=None, query_layer=0, sites=["model.layers.[01].mlp.down_proj"])
    ids, qmask, _ = with_answer(prompts())
    attn = torch.ones_like(ids)
    model(ids, attention_mask=attn, question_mask=qmask)
    full = model.last_routing
    calls = []
    handles = [
        model.backbone.model.layers[1].register_forward_pre_hook(lambda *a: calls.append("layer 1")),
        model.backbone.lm_head.register_forward_pre_hook(lambda *a: calls.append("lm_head")),
    ]
    routing = model.route(ids, attn, qmask)
    for h in handles:
        h.remove()
    assert calls == []  # stopped after the query layer (0), without an exception
    assert torch.equal(routing.ids, full.ids)
    torch.testing.assert_close(routing.weights, full.weights)
    assert len(model.backbone.model.layers) == 2  # the block list is restored
    with model.experts_off():  # routing is available with the experts off too
        assert torch.equal(model.route(ids, attn, qmask).ids, full.ids)
