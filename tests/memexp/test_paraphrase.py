"""Held-out paraphrases (memexp/paraphrase.py) and the paraphrase-routing probe (benchmarks/paraphrase_*)."""

from __future__ import annotations

import csv

import pytest
import torch
from memexp_helpers import QUICK_MODEL

from benchmarks.paraphrase_probe import (
    NORMS,
    cell_metrics,
    collate,
    encode,
    expert_keys,
    fit_norm,
    layer_states,
    pool,
    query_projection,
)
from benchmarks.paraphrase_routing import main
from memexp.facts import CODE_QUESTION, Fact, random_facts
from memexp.paraphrase import CODE_TEMPLATES, code_entity, paraphrase_facts, paraphrases, surface_variants


# ---------------------------------------------------------------------------------------- templates
def test_code_templates_change_the_text_keep_the_entity_and_are_never_a_training_question():
    facts = random_facts(200, seed=0)
    training = {f.question for f in facts}
    paras = paraphrase_facts(facts)
    assert len(CODE_TEMPLATES) >= 5
    assert len(paras) == len(facts) * len(CODE_TEMPLATES)
    assert not {p.question for p in paras} & training
    by_fact = {f.id: f for f in facts}
    for p in paras:
        original = by_fact[p.fact_id].question
        start, end = code_entity(original)
        entity = original[start:end]
        assert p.question != original
        assert p.question[p.entity[0] : p.entity[1]].lower() == entity.lower()
    for fact in facts[:5]:  # one paraphrase per template and fact, all distinct
        assert len({p.question for p in paraphrases(fact)}) == len(CODE_TEMPLATES)
    assert paraphrase_facts(facts) == paras  # deterministic


def test_code_templates_cover_words_contraction_case_punctuation_and_order():
    fact = Fact(0, CODE_QUESTION.format(entity="the red river"), "X1")
    text = {p.template: p.question for p in paraphrases(fact)}
    assert text["code_for"] == "What is the code for the red river?"
    assert text["contraction"].startswith("What's ")
    assert text["lowercase"] == fact.question.lower()
    assert text["no_mark"] == fact.question[:-1]
    assert text["tell_me"] == "Tell me the code of the red river."
    assert text["possessive"] == "The red river's code is what?"


def test_code_entity_only_matches_random_fact_questions():
    assert code_entity("What is the code of the red river?") == (20, 33)
    assert code_entity("What is the capital of France?") is None
    assert code_entity("what is the code of the red river?") is None


WHO = "Who is the author of Dune?"
NAME = "Name the capital of France."
SURFACE = [
    (WHO, {"case": "who" + WHO[3:], "punctuation": WHO[:-1], "contraction": "Who's" + WHO[6:]}),
    ("what's that", {"case": "What's that", "punctuation": "what's that?", "contraction": "what is that"}),
    (NAME, {"case": "n" + NAME[1:], "punctuation": NAME[:-1]}),
    ("2 plus 2?", {"punctuation": "2 plus 2"}),
]


@pytest.mark.parametrize("question, expected", SURFACE)
def test_surface_variants_of_a_users_question(question, expected):
    assert surface_variants(question) == expected
    paras = paraphrases(Fact(3, question, "a"))
    assert [p.template for p in paras] == list(expected)
    assert all(p.question != question and p.entity is None and p.fact_id == 3 for p in paras)


# ---------------------------------------------------------------------------------------- probe pieces
@pytest.fixture(scope="module")
def quick():
    from decoding.models import load_causal_lm, load_tokenizer

    return load_causal_lm(QUICK_MODEL, dtype="float32").eval(), load_tokenizer(QUICK_MODEL)


def _batch(tok, facts):
    questions = [f.question for f in facts]
    return collate(encode(tok, questions, [code_entity(q) for q in questions]), tok.pad_token_id)


def test_hooked_layer_states_equal_output_hidden_states_and_stop_early(quick):
    model, tok = quick
    batch = _batch(tok, random_facts(5, seed=1))
    with torch.no_grad():
        ref = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    every = layer_states(model, batch, [0, 1, 2])
    for layer in range(3):
        torch.testing.assert_close(every[layer], ref.hidden_states[layer])
    early = layer_states(model, batch, [1])  # stops in block 1
    assert list(early) == [1]
    torch.testing.assert_close(early[1], ref.hidden_states[1])


def test_token_masks_and_poolings(quick):
    _, tok = quick
    facts = random_facts(4, seed=2)
    batch = _batch(tok, facts)
    for row, fact in enumerate(facts):
        start, end = code_entity(fact.question)
        entity_text = tok.decode(batch["input_ids"][row][batch["entity"][row]]).strip()
        assert entity_text == fact.question[start:end]
        question_text = tok.decode(batch["input_ids"][row][batch["question"][row]]).strip()
        assert question_text == fact.question
    hidden = torch.randn(*batch["input_ids"].shape, 6)  # (B, T, H)
    lengths = batch["attention_mask"].sum(1)
    for row in range(len(facts)):
        n = int(lengths[row])
        torch.testing.assert_close(pool(hidden, batch, "mean")[row], hidden[row, :n].mean(0))
        torch.testing.assert_close(pool(hidden, batch, "last")[row], hidden[row, n - 1])
        torch.testing.assert_close(pool(hidden, batch, "max")[row], hidden[row, :n].amax(0))
        ent = batch["entity"][row]
        torch.testing.assert_close(pool(hidden, batch, "entity")[row], hidden[row, ent].mean(0))


def test_whitening_makes_the_originals_white_and_centring_centres():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 24, generator=gen) @ torch.randn(24, 24, generator=gen) + 3.0  # correlated, shifted
    proj = query_projection(24, 8, seed=0)
    white = fit_norm("whiten", x, proj)(x)
    torch.testing.assert_close(white.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(white.T, correction=0), torch.eye(8), atol=1e-3, rtol=0)
    assert fit_norm("centre", x, None)(x).mean(0).abs().max() < 1e-4
    assert fit_norm("whiten_nc", x, proj)(x).mean(0).abs().max() > 0.1  # not centred
    bn = fit_norm("bn", x, proj)(x)
    torch.testing.assert_close(bn.std(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    for name in NORMS:
        assert fit_norm(name, x, proj)(x[:3]).shape[0] == 3


def test_cell_metrics_on_exact_and_on_wrong_paraphrases():
    gen = torch.Generator().manual_seed(0)
    orig = torch.randn(50, 16, generator=gen)
    keys = expert_keys(512, 16, seed=0)
    target = torch.arange(50)
    same = cell_metrics(orig, {"copy": (orig.clone(), target)}, keys, k=8)["copy"]
    assert same["recall"] == 1.0 and same["ip_recall8"] == 1.0
    assert same["expert_overlap"] == 1.0 and same["dist_ratio"] < 1e-5
    wrong = cell_metrics(orig, {"shifted": (orig.roll(1, 0), target)}, None, k=8)
    assert wrong["shifted"]["recall"] == 0.0 and wrong["shifted"]["dist_ratio"] >= 1.0
    assert wrong["shifted"]["expert_overlap"] != wrong["shifted"]["expert_overlap"]  # NaN without keys
    noisy = orig + 0.3 * torch.randn(50, 16, generator=gen)
    both = cell_metrics(orig, {"a": (noisy, target), "b": (orig.roll(1, 0), target)}, keys, k=8)
    assert both["mean"]["recall"] == pytest.approx((both["a"]["recall"] + both["b"]["recall"]) / 2)
    assert 0.9 <= both["a"]["recall"] and 0.0 < both["a"]["dist_ratio"] < 1.0


def test_probe_writes_its_tables_and_figure(tmp_path):
    out, png = tmp_path / "out", tmp_path / "fig.png"
    main(
        [
            "--backbones",
            QUICK_MODEL,
            "--facts",
            "12",
            "--scale-facts",
            "16",
            "--out",
            str(out),
            "--png",
            str(png),
        ]
    )
    with (out / "paraphrase_routing.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 5 * len(NORMS) * (len(CODE_TEMPLATES) + 1)  # layers 0..2, 5 poolings
    assert {r["template"] for r in rows} == {*CODE_TEMPLATES, "mean"}
    assert all(0.0 <= float(r["recall"]) <= 1.0 for r in rows)
    with (out / "scale.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= len(CODE_TEMPLATES) + 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "# Paraphrase routing probe" in (out / "results.md").read_text()


def test_probe_refuses_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["--facts", "1"])
    assert "need --facts >= 2 (got 1)" in capsys.readouterr().err
