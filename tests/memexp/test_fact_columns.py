"""Per-fact columns: a loop oracle, the ln 2 recall bound, head columns, DeRa's references (adapter off, base
weights swapped in)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from memexp_helpers import QUICK_MODEL

from decoding.head_spec import parse_head_spec
from memexp.data import collate_examples, tokenize_fact
from memexp.fact_eval import evaluate_facts, fact_columns
from memexp.fact_tuning import FactTuning
from memexp.facts import random_facts
from memexp.model_view import reference_of


def loop_oracle(logits, labels):
    """Literal per-row, per-position computation of the per-fact fields."""
    rows = []
    for b in range(logits.shape[0]):
        nlls, hits = [], []
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            logp = torch.log_softmax(logits[b, t].double(), -1)
            nlls.append(-float(logp[target]))
            hits.append(int(logits[b, t].argmax()) == target)
        rows.append((sum(nlls), sum(nlls) / len(nlls), max(nlls), all(hits), len(nlls)))
    return rows


def synthetic(seed: int, B: int = 6, T: int = 7, V: int = 5, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * scale
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = -100  # prompt
    labels[0, 5:] = -100  # a shorter answer
    return logits, labels


@pytest.mark.parametrize("seed", range(3))
def test_fact_columns_match_a_loop_oracle(seed):
    logits, labels = synthetic(seed)
    cols = fact_columns(logits, labels)
    for b, (nll_sum, nll_tok, worst, exact, n) in enumerate(loop_oracle(logits, labels)):
        assert cols["nll_sum"][b].item() == pytest.approx(nll_sum, rel=1e-5)
        assert cols["nll"][b].item() == pytest.approx(nll_tok, rel=1e-5)
        assert cols["max_tok_nll"][b].item() == pytest.approx(worst, rel=1e-5)
        assert cols["min_tok_p"][b].item() == pytest.approx(math.exp(-worst), rel=1e-5)
        assert bool(cols["exact"][b]) == exact and int(cols["num_tokens"][b]) == n


def test_every_fact_below_ln2_summed_nll_is_recalled_exactly():
    """nll_sum < ln 2 implies greedy exact match (each token then has p > 1/2)."""
    below = 0
    for seed in range(100):
        logits, labels = synthetic(seed, B=16, scale=3.0)
        g = torch.Generator().manual_seed(1000 + seed)
        boost = torch.rand(16, 1, generator=g) * 12  # (B, 1): from no help to near-certain gold tokens
        gold = torch.zeros_like(logits[:, :-1])  # (B, T-1, V) one-hot of the gold tokens
        gold.scatter_(-1, labels.clamp_min(0)[:, 1:, None], 1.0)
        logits[:, :-1] += boost[:, :, None] * gold * (labels[:, 1:, None] != -100)
        cols = fact_columns(logits, labels)
        ok = cols["nll_sum"] < math.log(2)
        below += int(ok.sum())
        assert cols["exact"][ok].all()
    assert 100 < below < 1500  # the property was exercised, and not trivially on every fact


@pytest.fixture(scope="module")
def tiny_batch():
    from decoding.models import load_tokenizer

    tok = load_tokenizer(QUICK_MODEL)
    examples = [
        tokenize_fact(f, tok, "Q: {question}\nA:") for f in random_facts(6, seed=0, min_len=4, max_len=6)
    ]
    return tok, examples


def test_greedy_head_column_equals_the_exact_column_and_dera_lam1_too(tiny_batch):
    tok, examples = tiny_batch
    L.seed_everything(0)
    module = FactTuning(QUICK_MODEL, method="lora", lora_r=2)
    with torch.no_grad():  # move the adapter off zero so that adapter on != off
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    specs = ["greedy", "dera:lam=1", "dera:lam=0"]
    heads = {spec: parse_head_spec(spec) for spec in specs}
    reference = reference_of(module.model)
    batches = [collate_examples(examples[i : i + 4], tok.pad_token_id) for i in range(0, len(examples), 4)]
    cols = evaluate_facts(module.model, batches, heads, reference)
    assert torch.equal(cols["exact/greedy"], cols["exact"])
    assert torch.equal(cols["exact/dera:lam=1"], cols["exact"])
    batch = collate_examples(examples, tok.pad_token_id)
    with reference():  # adapter off: DeRa at lambda 0 is greedy decoding of the reference
        base = fact_columns(module(batch), batch["labels"])
    assert torch.equal(cols["exact/dera:lam=0"], base["exact"])
    assert not torch.allclose(base["nll_sum"], cols["nll_sum"])  # the reference really differs
    assert cols["fact_id"].tolist() == list(range(6))


def test_swapped_weights_runs_the_base_model_and_restores_the_tuned_one(tiny_batch):
    tok, examples = tiny_batch
    L.seed_everything(0)
    module = FactTuning(QUICK_MODEL, method="full")
    base_state = {k: v.clone() for k, v in module.model.state_dict().items()}
    batch = collate_examples(examples, tok.pad_token_id)
    base_logits = module(batch)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned_logits = module(batch)
    assert not torch.allclose(tuned_logits, base_logits)
    reference = reference_of(module.model, base_state)
    with reference():
        assert torch.equal(module(batch), base_logits)
    assert torch.equal(module(batch), tuned_logits)
