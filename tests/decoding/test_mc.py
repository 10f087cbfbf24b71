"""Multiple-choice scoring against a per-position reference loop; metrics by hand; loaders and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from decoding_oracles import per_layer_logits, sled_reference_step

from decoding.dola import DoLa
from decoding.greedy import Greedy
from decoding.mc import evaluate_factor, evaluate_truthfulqa, mc_metrics, score_continuations
from decoding.mc_datasets import load_factor, load_truthfulqa
from decoding.presets import head_for_task

PREFIX = "Q: What is the code of the city?\nA:"
CHOICES = [" 42 is the number.", " I have no comment.", " the river", " A"]


def loop_score(model, tok, prefix, cont, step, post_softmax):
    """The references' lm_score: joint tokenisation, one position at a time, per-layer lm_head calls."""
    ids = tok(prefix + cont, return_tensors="pt").input_ids
    n_prefix = len(tok(prefix).input_ids)
    n = model.config.num_hidden_layers
    total = 0.0
    with torch.no_grad():
        for pos in range(n_prefix - 1, ids.shape[1] - 1):
            early, mature = per_layer_logits(model, ids, list(range(n)), position=pos)
            out = step(early, mature)
            if post_softmax:
                out = out.float().log_softmax(-1)
            total += float(out[ids[0, pos + 1]])
    return total


def _sled(task):
    h = head_for_task("sled", task)
    return h, lambda e, m: sled_reference_step(
        e, m, h.evolution_rate, h.evolution_scale, h.evolution_lower_bound, h.op_T
    )


@pytest.mark.parametrize("case", ["greedy-raw", "greedy-logsoftmax", "sled-tfqa", "sled-factor"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_vectorised_equals_position_loop(case, name, request):
    model, tok = request.getfixturevalue(name)
    post = case.endswith("logsoftmax") or case == "sled-factor"
    if case.startswith("greedy"):
        head, step = Greedy(), lambda e, m: m
    else:
        head, step = _sled("truthfulqa-mc" if case == "sled-tfqa" else "factor")
    fast = score_continuations(model, tok, PREFIX, CHOICES, head, post_softmax=post)
    chunked = score_continuations(model, tok, PREFIX, CHOICES, head, post_softmax=post, max_elements=1)
    slow = [loop_score(model, tok, PREFIX, c, step, post) for c in CHOICES]
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(chunked.numpy(), fast.numpy(), rtol=1e-5, atol=1e-4)  # fp32 batching order


def test_dola_vectorised_equals_literal(llama):
    model, tok = llama
    head = DoLa([0, 1, 2, 3], relative_top=0.1)
    fast = score_continuations(model, tok, PREFIX, CHOICES, head, post_softmax=True)
    cands = [0, 1, 2, 3]

    def step(early, mature):  # DoLa's MC score, one position
        from decoding_oracles import dola_js

        m = int(dola_js(mature.float(), early).argmax())
        final = mature.log_softmax(-1)
        diff = (final - early[m].log_softmax(-1)).log_softmax(-1)
        return torch.where(final < final.max() + math.log(0.1), -1000.0, diff)

    slow = [loop_score(model, tok, PREFIX, c, step, False) for c in CHOICES]
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-4, atol=1e-3)
    assert cands == list(head.required_layers(4))


def test_mc_metrics_by_hand():
    m = mc_metrics([1.0, 2.0], [0.0, 3.0], best=2.0)
    e = math.e
    assert m["MC1"] == 0.0 and m["MC3"] == 0.0
    assert m["MC2"] == pytest.approx((e + e**2) / (e + e**2 + 1 + e**3))
    m = mc_metrics([5.0, 1.0], [0.0, 3.0], best=5.0)
    assert m["MC1"] == 1.0 and m["MC3"] == 0.5
    # underflow: the true scores are halved twice (-2000 -> -500), then the ratio is tiny but not 0
    m = mc_metrics([-2000.0, -2100.0], [-1.0, 0.0], best=-2000.0)
    expect = (math.exp(-500) + math.exp(-525)) / (math.exp(-500) + math.exp(-525) + math.exp(-1) + 1)
    assert m["MC2"] == pytest.approx(expect) and m["MC2"] > 0 and m["mc2_nan"] == 0
    # raw-logit overflow: inf / inf -> NaN -> MC2 = 0, counted
    m = mc_metrics([1000.0], [999.0], best=1000.0)
    assert m["MC2"] == 0.0 and m["mc2_nan"] == 1.0


def test_factor_ties_count_as_correct(monkeypatch, tmp_path):
    import decoding.mc as mc
    from decoding.mc_datasets import FactorItem

    items = [FactorItem("p", "a", ["b", "c", "d"])] * 3
    scores = iter([[1.0, 1.0, 0.0, 0.0], [1.0, 1.5, 0.0, 0.0], [2.0, 1.0, 1.0, 1.9]])
    monkeypatch.setattr(mc, "score_continuations", lambda *a, **k: torch.tensor(next(scores)))
    assert evaluate_factor(None, None, items, Greedy(), progress=False)["accuracy"] == pytest.approx(2 / 3)


TFQA_CSV = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
    "A,B,What is the code?,42,42; forty-two.; I have no comment,the river; A city,x\n"
    "A,B,Who wrote?,nobody,nobody; I have no comment,the author,x\n"
)


def test_truthfulqa_loaders(tmp_path):
    csv_path = tmp_path / "tfqa.csv"
    csv_path.write_text(TFQA_CSV)
    items = load_truthfulqa(csv_path)
    assert items[0].best == "42." and items[0].true == ["42.", "forty-two.", "I have no comment."]
    assert items[0].false == ["the river.", "A city."]
    mc = {
        "question": "What is the code?",
        "mc1_targets": {"choices": ["42.", "the river.", "no."], "labels": [1, 0, 0]},
        "mc2_targets": {"choices": ["42.", "forty-two.", "the river."], "labels": [1, 1, 0]},
    }
    jsonl = tmp_path / "mc.jsonl"
    jsonl.write_text(json.dumps(mc) + "\n")
    (item,) = load_truthfulqa(jsonl)
    assert (item.best, item.mc1_false, item.true, item.false) == (
        "42.",
        ["the river.", "no."],
        ["42.", "forty-two."],
        ["the river."],
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([mc]), tmp_path / "mc.parquet")
    assert load_truthfulqa(tmp_path / "mc.parquet")[0] == item


def test_truthfulqa_generation_layout_with_list_answers(tmp_path):
    """HF's truthful_qa/generation records (list answers without the final '.') load as the CSV does."""
    records = [
        {
            "type": "A",
            "category": "B",
            "question": "What is the code?",
            "best_answer": "42",
            "correct_answers": ["42", "forty-two.", "I have no comment"],
            "incorrect_answers": ["the river", "A city"],
            "source": "x",
        },
        {
            "type": "A",
            "category": "B",
            "question": "Who wrote?",
            "best_answer": "nobody",
            "correct_answers": ["nobody", " I have no comment "],
            "incorrect_answers": ["the author"],
            "source": "x",
        },
    ]
    csv_path = tmp_path / "tfqa.csv"
    csv_path.write_text(TFQA_CSV)
    expect = load_truthfulqa(csv_path)
    (tmp_path / "gen.json").write_text(json.dumps(records))
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), tmp_path / "gen.parquet")
    for name in ("gen.json", "gen.jsonl", "gen.parquet"):
        assert load_truthfulqa(tmp_path / name) == expect, name
    assert expect[0].best == "42." and expect[0].true == ["42.", "forty-two.", "I have no comment."]


def test_malformed_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "q", "best_answer": "a", "correct_answers": "a", "incorrect_answers": "b"})
        + "\n{not json\n"
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_truthfulqa(bad)
    csv_path = tmp_path / "tfqa.csv"
    csv_path.write_text("Question,Best Answer,Correct Answers\nq,a,a\n")
    with pytest.raises(ValueError, match=r"tfqa\.csv:2: missing field 'Incorrect Answers'"):
        load_truthfulqa(csv_path)
    fac = tmp_path / "wiki_factor.csv"
    fac.write_text(
        "turncated_prefixes,completion,contradiction_0,contradiction_1,contradiction_2\np,a,b,c,d\np,a,b,,d\n"
    )
    with pytest.raises(ValueError, match=r"wiki_factor\.csv:3: needs non-empty contradiction"):
        load_factor(fac)


def test_end_to_end_metrics(llama, tmp_path):
    model, tok = llama
    csv_path = tmp_path / "tfqa.csv"
    csv_path.write_text(TFQA_CSV)
    items = load_truthfulqa(csv_path)
    metrics = evaluate_truthfulqa(model, tok, items, head_for_task("sled", "truthfulqa-mc"), progress=False)
    assert set(metrics) == {"MC1", "MC2", "MC3", "n", "mc2_nan"} and metrics["n"] == 2
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("MC1", "MC2", "MC3"))
    fac = tmp_path / "news_factor.csv"
    fac.write_text(
        "full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nThe code is,42,7,8,9\n"
    )
    out = evaluate_factor(model, tok, load_factor(fac), head_for_task("dola", "factor"), progress=False)
    assert out["n"] == 1 and out["accuracy"] in (0.0, 1.0)


def test_prefix_reuse_and_dera_scoring(llama, llama2):
    model, tok = llama
    head = head_for_task("sled", "truthfulqa-mc")
    reused = score_continuations(model, tok, PREFIX, CHOICES, head)
    plain = score_continuations(model, tok, PREFIX, CHOICES, head, reuse_prefix=False)
    np.testing.assert_allclose(reused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-4)
    from decoding.dera import DeRa

    for lam, m in ((1.0, model), (0.0, llama2)):
        mixed = score_continuations(
            model, tok, PREFIX, CHOICES, DeRa(lam), post_softmax=True, ref_model=llama2
        )
        alone = score_continuations(m, tok, PREFIX, CHOICES, Greedy(), post_softmax=True)
        np.testing.assert_allclose(mixed.numpy(), alone.numpy(), rtol=1e-5, atol=1e-4)
