"""Retain loss: its inputs avoid the facts, its KL matches a plain full-forward oracle, and training with it
moves held-out answers less when the gate is open."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoding.errors import UserError
from decoding.models import load_causal_lm, load_tokenizer
from memexp.answer_logits import answer_positions, summed_answer_nll
from memexp.data import collate_examples
from memexp.facts import random_facts
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.retain import RetainSet, check_retain, retain_examples, retain_questions
from memexp.mome.tuning import MoMETuning
from tests.mome.test_layer_cache import LLAMA4, facts_data
from tests.mome.test_mome_module import fit, make_config

TEMPLATE = "Q: {question}\nA:"


def test_retain_questions_avoid_the_facts_and_are_seeded():
    used = random_facts(40, seed=0)
    got = retain_questions(60, used, seed=0)
    assert [f.id for f in got] == list(range(60))
    assert not {f.question for f in got} & {f.question for f in used}
    assert got == retain_questions(60, used, seed=0)
    assert got != retain_questions(60, used, seed=1)


def config(**kw) -> MoMEConfig:
    small = {"num_experts": 64, "sites": ["*.layers.[23].mlp.down_proj"], "query_layer": 1}
    return make_config(**(small | kw))


def retain_set(questions: int = 3, chunks: int = 2, seed: int = 0) -> tuple[MoMEModel, RetainSet, list]:
    torch.manual_seed(0)
    tok = load_tokenizer(LLAMA4)
    mome = MoMEModel(load_causal_lm(LLAMA4).eval(), config()).eval()
    examples = retain_examples(tok, TEMPLATE, random_facts(5), questions, chunks, chunk_len=12, seed=seed)
    return mome, RetainSet(mome, examples, tok.pad_token_id, positions=5, batch_size=4, seed=seed), examples


def test_compared_positions_are_answers_for_questions_and_every_token_for_prose():
    _, rs, examples = retain_set()
    labels = collate_examples(examples, 0)["labels"]
    assert torch.equal(rs.compared[:3], answer_positions(labels[:3]))
    prose = rs.compared[3:]  # two 12-token chunks: positions 0..10 predict tokens 1..11
    assert prose[:, :11].all() and not prose[:, 11:].any()
    assert examples[3].prompt_ids and examples[3].answer_ids == []


def test_retain_kl_matches_a_full_forward_oracle_and_trains_only_selected_experts():
    mome, rs, _ = retain_set()
    assert float(rs.loss(mome).detach()) == pytest.approx(
        0.0, abs=1e-6
    )  # B starts at 0: the backbone exactly
    with torch.no_grad():
        for p in mome.expert_parameters():
            p.normal_(0, 0.3)
    state = rs.generator.get_state()
    rows, keep = rs._sample()
    rs.generator.set_state(state)
    loss = rs.loss(mome)
    b = {k: v[rows] for k, v in rs.batch.items()}
    with torch.no_grad():
        routed = mome(
            b["input_ids"],
            attention_mask=b["attention_mask"],
            expert_ids=rs.ids[rows],
            expert_weights=rs.weights[rows],
        ).logits[keep]  # (N, V) the whole model, every block
        with mome.experts_off():
            base = mome(b["input_ids"], attention_mask=b["attention_mask"]).logits[keep]
    p_base, log_routed = F.softmax(base.float(), -1), F.log_softmax(routed.float(), -1)
    oracle = (p_base * (p_base.log() - log_routed)).sum(-1).mean()
    assert float(loss) > 1e-3
    torch.testing.assert_close(loss.detach(), oracle, atol=1e-4, rtol=1e-3)
    loss.backward()
    selected = set(rs.ids[rows].flatten().tolist())
    for p in mome.expert_parameters():
        grad = p.grad.coalesce() if p.grad.is_sparse else p.grad
        touched = (
            set(grad.indices()[0].tolist())
            if grad.is_sparse
            else set(grad.abs().sum(1).nonzero()[:, 0].tolist())
        )
        assert touched and touched <= selected


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(weight=1.0, questions=0, chunks=0), "needs retain inputs"),
        (dict(weight=-1.0, questions=1, chunks=0), "retain_weight=-1.0"),
        (dict(weight=1.0, questions=-2, chunks=0), "retain_questions=-2"),
        (dict(weight=1.0, questions=1, chunks=0, chunk_len=1), "retain_chunk_len=1"),
    ],
)
def test_bad_retain_settings_are_refused(kw, match):
    args = dict(chunk_len=64, batch=16, positions=16) | kw
    with pytest.raises(UserError, match=match):
        check_retain(**args)


def test_too_many_chunks_and_per_token_routing_are_refused():
    tok = load_tokenizer(LLAMA4)
    with pytest.raises(UserError, match="retain_chunks=100000"):
        retain_examples(tok, TEMPLATE, [], 0, 100_000, 64, 0)
    mome = MoMEModel(load_causal_lm(LLAMA4).eval(), config(per_token=True))
    with pytest.raises(UserError, match="per-question routing"):
        RetainSet(mome, retain_examples(tok, TEMPLATE, [], 2, 0, 64, 0), tok.pad_token_id, 4, 4, 0)


PRETRAINED = "tiny:llama?layers=4&pretrain_steps=100"  # pretrained a little: experts learn on it


def answer_nll(mome: MoMEModel, examples: list, pad_id: int) -> float:
    """Mean summed answer NLL of ``examples``, each routed on its question."""
    batch = collate_examples(examples, pad_id)
    keep = answer_positions(batch["labels"])
    with torch.no_grad():
        logits = mome(
            batch["input_ids"], attention_mask=batch["attention_mask"], question_mask=batch["prompt_mask"]
        ).logits
    return float(summed_answer_nll(logits[keep], batch["labels"], keep).mean())


def retain_kl_after_training(retain_weight: float, tmp_path) -> tuple[float, float]:
    """(mean KL(backbone || routed) over every retain row and position, trained facts' answer NLL / the
    backbone's) after the same training with ``retain_weight``."""
    torch.manual_seed(0)
    sites = ["model.layers.[23].mlp.down_proj", "model.layers.[23].self_attn.o_proj"]
    module = MoMETuning(
        backbone=PRETRAINED,
        mome=config(sites=sites, scale=8.0, k=8, num_experts=80, query_layer=2),
        phase1_epochs=1,
        lr=2e-2,
        stop_nll=0.0,
        balance_keys=True,
        retain_weight=retain_weight,
        retain_questions=40,
        retain_chunks=20,
        retain_chunk_len=16,
        retain_batch=8,
    )
    data = facts_data(tokenizer=PRETRAINED, n=10)
    fit(module, data, 30, tmp_path, val_every=1000)  # no validation
    mome, pad = module.model.eval(), data.tokenizer.pad_token_id
    trained = answer_nll(mome, data.train_examples, pad)
    with mome.experts_off():
        trained_base = answer_nll(mome, data.train_examples, pad)
    rs = module._retain_set() if retain_weight > 0 else None
    if rs is None:  # the same retain inputs, built on the trained model for measuring only
        tok = data.tokenizer
        examples = retain_examples(tok, TEMPLATE, data.facts + data.heldout_facts, 40, 20, 16, 0)
        rs = RetainSet(mome, examples, tok.pad_token_id, positions=16, batch_size=len(examples), seed=0)
    rs.batch_size, rs.positions = len(rs), 10**6  # every row, every compared position
    with torch.no_grad():
        kl = float(rs.loss(mome))
    return kl, trained / trained_base


def test_training_with_the_retain_loss_keeps_retain_inputs_near_the_backbone(tmp_path):
    kl_without, learned_without = retain_kl_after_training(0.0, tmp_path / "without")
    kl_with, learned_with = retain_kl_after_training(1.0, tmp_path / "with")
    print(
        f"retain KL after training: without {kl_without:.4f}, with {kl_with:.4f}; "
        f"trained answer NLL / backbone's: {learned_without:.3f}, {learned_with:.3f}"
    )
    assert learned_without < 0.95 and learned_with < 0.95  # both runs learned their facts
    assert kl_without > 0.05  # experts trained on facts change what else reaches them
    assert kl_with < 0.5 * kl_without
