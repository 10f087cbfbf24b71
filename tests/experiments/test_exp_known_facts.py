"""The known-facts task of the random-label study: answer check, split by family, in-family corruption,
the answer-only exact column, and the scan's file on resume."""

from __future__ import annotations

import json

import pytest
import torch
from exp_helpers import QUICK_MODEL

from decoding.errors import UserError
from experiments.code_facts import corrupt
from experiments.known_facts import HELDOUT_FAMILIES, SCAN_FILE, known_task, load_or_scan, says
from experiments.one_word_qa import FAMILIES
from memexp.data import IGNORE_INDEX
from memexp.fact_eval import fact_columns


def fake_scan() -> list[dict]:
    """Every one-word question, 'answered' correctly for even entities (held-out ones reproduced)."""
    items = []
    for family, (facts, templates) in FAMILIES.items():
        for i, (entity, answer) in enumerate(sorted(facts.items())):
            ok = i % 2 == 0
            said = f"It is {answer}." if ok else "I do not know."
            item = {"family": family, "entity": entity, "question": templates[0].format(entity)}
            items.append({**item, "expected": answer, "said": said, "correct": ok, "reproduced": ok})
    return items


def test_says_matches_whole_words_case_insensitively():
    assert says("Paris", "The capital of France is paris.")
    assert not says("Rome", "Romeo and Juliet")
    assert says("7", "3 + 4 = 7")
    assert not says("7", "3 + 4 = 17")


def test_known_task_trains_on_known_one_word_answers_and_holds_out_other_families():
    items = fake_scan()
    task = known_task(items, num_train=30, num_heldout=20, seed=1)
    by_question = {it["question"]: it for it in items}
    assert len(task.train) == 30 and len(task.heldout) == 20
    for fact in task.train:
        item = by_question[fact.question]
        assert item["correct"] and item["family"] not in HELDOUT_FAMILIES
        assert fact.answer == item["expected"]
        assert fact.answer in task.pools[fact.id]
    for fact in task.heldout:
        item = by_question[fact.question]
        assert item["reproduced"] and item["family"] in HELDOUT_FAMILIES
        assert fact.answer == item["said"]  # the backbone's own sentence
    ids = [f.id for f in task.train + task.heldout]
    assert len(set(ids)) == len(ids)
    assert known_task(items, 30, 20, seed=1) == task  # seeded
    assert known_task(items, 30, 20, seed=2).train != task.train


def test_known_task_names_how_many_questions_exist_when_asked_for_more():
    with pytest.raises(UserError, match=r"answers \d+ training-family and \d+ held-out-family"):
        known_task(fake_scan(), num_train=10_000, num_heldout=1)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_corrupting_with_pools_draws_another_answer_of_the_same_family(p):
    task = known_task(fake_scan(), 40, 0, seed=0)
    out, ids = corrupt(task.train, p, seed=3, pools=task.pools)
    assert len(ids) == round(p * 40)
    for before, after in zip(task.train, out):
        assert after.question == before.question and after.id == before.id
        if after.id in ids:
            assert after.answer != before.answer and after.answer in task.pools[after.id]
        else:
            assert after.answer == before.answer
    half, half_ids = corrupt(task.train, 0.5, seed=3, pools=task.pools)
    full, _ = corrupt(task.train, 1.0, seed=3, pools=task.pools)
    for i in half_ids:  # nested across p, the same random answer at every p
        assert half[i].answer == full[i].answer


def test_answer_exact_ignores_only_the_end_of_sequence_token():
    # one row: prompt (2 tokens), answer tokens 5, 6, then eos 2; logits predict position t + 1
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, 2]])
    vocab = 8

    def logits_for(predicted: list[int]) -> torch.Tensor:
        out = torch.zeros(1, 5, vocab)
        for t, token in enumerate(predicted):
            out[0, t, token] = 5.0
        return out

    right = fact_columns(logits_for([0, 5, 6, 2, 0]), labels)
    assert right["exact"].item() and right["answer_exact"].item()
    goes_on = fact_columns(logits_for([0, 5, 6, 7, 0]), labels)  # the answer, then no eos
    assert not goes_on["exact"].item() and goes_on["answer_exact"].item()
    wrong = fact_columns(logits_for([0, 5, 7, 2, 0]), labels)
    assert not wrong["exact"].item() and not wrong["answer_exact"].item()


def test_the_scan_is_read_back_and_refused_for_another_backbone(tmp_path):
    items = fake_scan()
    (tmp_path / SCAN_FILE).write_text(
        json.dumps({"backbone": "b", "template": "Q: {question}\nA:", "items": items})
    )
    assert load_or_scan(tmp_path, "b") == items
    with pytest.raises(UserError, match="scanned with backbone 'b'"):
        load_or_scan(tmp_path, "other")


def test_greedy_lines_are_hf_greedy_generation_through_the_greedy_head():
    from decoding.models import load_causal_lm, load_tokenizer
    from experiments.known_facts import greedy_lines

    torch.manual_seed(0)
    model, tok = load_causal_lm(QUICK_MODEL).eval(), load_tokenizer(QUICK_MODEL)
    prompts = ["Q: What is the capital of France?\nA:", "Q: Who wrote it?\nA:", "Hello"]
    want = []
    for prompt in prompts:  # the oracle: HF's own greedy search, one prompt at a time
        enc = tok(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(ids[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
        want.append(text.strip().split("\n")[0].strip())
    assert greedy_lines(model, tok, prompts, max_new_tokens=6, batch=2) == want
    assert any(want)  # the check compares text, not empty lines
