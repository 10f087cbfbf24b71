"""The code knowledge base and label corruption: rule, splits, exact nested corruption, bad fractions."""

from __future__ import annotations

import math
import re

import pytest
import torch

from experiments.code_facts import answer_entropy_nats, code_task, corrupt
from experiments.image_labels import corrupt_labels
from memexp.facts import ANSWER_ALPHABET

QUESTION = re.compile(r"What is the code of the (\w+) (\w+)\?")


def test_answers_follow_the_rule_and_heldout_pairs_are_unseen_with_seen_words():
    task = code_task(num_train=120, num_heldout=40, seed=3, code_len=3)
    assert len(task.train) == 120 and len(task.heldout) == 40
    pairs = {}
    for fact in task.train + task.heldout:
        adjective, noun = QUESTION.fullmatch(fact.question).groups()
        assert fact.answer == task.codes[adjective] + task.codes[noun]
        pairs[fact.id] = (adjective, noun)
    train_pairs = {pairs[f.id] for f in task.train}
    train_words = {w for pair in train_pairs for w in pair}
    for fact in task.heldout:
        assert pairs[fact.id] not in train_pairs
        assert set(pairs[fact.id]) <= train_words
    assert len(set(task.codes.values())) == len(task.codes)  # one code per word
    assert code_task(120, 40, seed=3).train == task.train  # seeded


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_corrupt_replaces_exactly_round_p_n_answers_with_random_strings(p):
    facts = code_task(50, 0, seed=1).train
    out, ids = corrupt(facts, p, seed=7)
    assert len(ids) == round(p * 50)
    for before, after in zip(facts, out):
        assert (before.id, before.question) == (after.id, after.question)
        if after.id in ids:
            assert after.answer != before.answer
            assert len(after.answer) == len(before.answer)
            assert set(after.answer) <= set(ANSWER_ALPHABET)
        else:
            assert after.answer == before.answer


def test_corrupted_sets_and_random_answers_are_nested_across_p():
    facts = code_task(40, 0, seed=2).train
    half, half_ids = corrupt(facts, 0.5, seed=0)
    full, full_ids = corrupt(facts, 1.0, seed=0)
    assert set(half_ids) < set(full_ids)
    by_id = {f.id: f.answer for f in full}
    assert all(by_id[f.id] == f.answer for f in half if f.id in half_ids)
    assert corrupt(facts, 0.5, seed=1)[1] != half_ids  # another seed, another set


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_fraction_is_refused_with_the_value_named(bad):
    facts = code_task(10, 0).train
    with pytest.raises(ValueError, match=r"in \[0, 1\].*" + re.escape(repr(bad))):
        corrupt(facts, bad)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        corrupt_labels(torch.zeros(10, dtype=torch.long), bad, 10)


def test_corrupt_labels_redraws_round_p_n_labels_uniformly_and_nested():
    y = torch.arange(1000) % 10
    half, half_ids = corrupt_labels(y, 0.5, 10, seed=0)
    full, full_ids = corrupt_labels(y, 1.0, 10, seed=0)
    assert len(half_ids) == 500 and set(half_ids) < set(full_ids)
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[half_ids] = False
    assert torch.equal(half[untouched], y[untouched])
    assert torch.equal(half[half_ids], full[half_ids])
    kept = (full == y).float().mean().item()  # uniform redraw keeps the true class 1/10 of the time
    assert abs(kept - 0.1) < 0.04
    assert int(full.min()) == 0 and int(full.max()) == 9


def test_entropy_of_random_answers_matches_the_documented_figures():
    assert answer_entropy_nats(32) == pytest.approx(114.7, abs=0.05)  # 32 log2 36 = 165.4 bits
    assert answer_entropy_nats(32) / math.log(2) == pytest.approx(165.4, abs=0.05)


def test_image_lora_trains_only_the_adapter_and_the_head_and_starts_like_full():
    from experiments.image_labels import ImageTuning

    torch.manual_seed(0)
    lora = ImageTuning("lora", checkpoint=None, lora_r=2)
    torch.manual_seed(0)
    full = ImageTuning("full", checkpoint=None)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    assert all(p.requires_grad for p in full.parameters())
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(lora(x), full(x), atol=1e-6)  # LoRA B starts at zero: same function at step 0
    with pytest.raises(ValueError, match="unknown image method 'mome'"):
        ImageTuning("mome", checkpoint=None)
