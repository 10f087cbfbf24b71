"""Answer metrics: word counts, whole-word matches, continuation NLL vs HF's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.answer_metrics import contains_word, continuation_nll, word_count


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("Paris", 1),
        ("Paris.", 1),
        ("  Paris\n", 1),
        ("The capital of France is Paris.", 6),
        ("", 0),
        (" - ", 0),
        ("Cold - very cold", 3),
        ("12", 1),
    ],
)
def test_word_count(text, n):
    assert word_count(text) == n


def test_contains_word():
    assert contains_word("The capital of France is Paris.", "paris")
    assert contains_word("Mice", "mice")
    assert not contains_word("mouse", "mice")
    assert not contains_word("Parisian food", "Paris")
    assert contains_word("It is 12.", "12")
    assert not contains_word("It is 120.", "12")


def test_continuation_nll_equals_hf_loss(llama):
    """Batched, right-padded scoring == HF's loss with the prompt masked out, one row at a time."""
    model, _ = llama
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 9, 2)]
    conts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 1, 7)]
    got = continuation_nll(model, prompts + [prompts[0]], conts + [[]], batch_size=2)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        ids = torch.tensor([p + c])
        labels = torch.tensor([[-100] * len(p) + c])
        with torch.no_grad():
            expect = model(input_ids=ids, labels=labels).loss.item()
        assert got[i].item() == pytest.approx(expect, rel=1e-5, abs=1e-5)
    assert math.isnan(got[3].item())  # empty continuation
    with pytest.raises(ValueError, match="3 prompts but 2"):
        continuation_nll(model, prompts, conts[:2])
