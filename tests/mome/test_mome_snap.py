"""Snap routing (``MoMEConfig.snap``): a question near a memorised fact selects exactly its experts."""

from __future__ import annotations

import pytest
import torch
from test_mome_module import fit, make_config, make_data, make_module

from decoding.errors import UserError
from memexp.data import collate_examples
from memexp.facts import CODE_QUESTION, Fact
from memexp.mome import MoMEConfig
from memexp.mome.checkpoint import load_mome, save_mome
from memexp.mome.gate import FactGate, nearest
from memexp.mome.router import Router
from memexp.paraphrase import CODE_TEMPLATES, TRAIN_TEMPLATES, training_rewordings


def make_router(seed: int = 0) -> Router:
    """A small frozen router (no batch-norm) with 64 experts, k = 4."""
    torch.manual_seed(seed)
    return Router(hidden_size=12, num_experts=64, k=4, key_dim=8, balance="none", sparse=False).eval()


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    facts, queries = torch.randn(20, 6, generator=g), torch.randn(9, 6, generator=g)
    dist, row = nearest(queries, facts)
    brute = torch.cdist(queries, facts)
    assert torch.equal(row, brute.argmin(1))
    torch.testing.assert_close(dist, brute.min(1).values)


def test_snap_inside_the_radius_gives_exactly_the_nearest_facts_experts():
    router = make_router()
    g = torch.Generator().manual_seed(1)
    facts = torch.randn(10, 12, generator=g)  # (F, H) pooled features of the memorised facts
    with torch.no_grad():
        own = router.route_features(facts)
        router.gate.fit(own.queries.flatten(1), rel_radius=0.0, rel_snap=0.5)
        radius = float(router.gate.snap_radius)
        noise = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=1)
        near = own.queries.flatten(1) + 0.9 * radius * noise  # inside the snap radius of its own fact
        far = own.queries.flatten(1)[:5] + 3.0 * radius * noise[:5]  # 1.5 spacings away: outside
        assert not torch.equal(router.select(near.view(-1, 1, 8))[0], own.ids)  # own top-k: not the fact's
        snapped, inside = router.gate.snap(near)
        assert inside.all() and torch.equal(snapped, own.queries.flatten(1))
        ids, weights = router.select(snapped.view(-1, 1, 8))
        assert torch.equal(ids, own.ids) and torch.equal(weights, own.weights)
        kept, inside = router.gate.snap(far)
        dist = torch.cdist(far, own.queries.flatten(1)).min(1).values
        assert torch.equal(inside, dist <= radius) and not inside.all()
        assert torch.equal(kept[~inside], far[~inside])  # outside: the question's own query


def test_router_snaps_through_route_features_and_off_changes_nothing():
    router = make_router()
    g = torch.Generator().manual_seed(2)
    facts = torch.randn(10, 12, generator=g)
    questions = facts + 0.3 * torch.randn(10, 12, generator=g)
    with torch.no_grad():
        plain = router.route_features(questions)  # nothing stored: the router as before
        own = router.route_features(facts)
        router.gate.fit(own.queries.flatten(1), rel_radius=0.0, rel_snap=0.0)  # stored, snapping off
        assert not router.gate.snapping and not router.gate.active
        off = router.route_features(questions)
        router.gate.set_snap(float("inf"))  # every question snaps to its nearest fact
        on = router.route_features(questions)
    for field in ("ids", "weights", "queries"):
        assert torch.equal(getattr(off, field), getattr(plain, field))  # snap off: unchanged
    rows = torch.cdist(on.queries.flatten(1), own.queries.flatten(1)).argmin(1)
    assert torch.equal(on.ids, own.ids[rows]) and torch.equal(on.weights, own.weights[rows])
    assert torch.equal(on.queries, plain.queries)  # Routing.queries stays the question's own
    assert not torch.equal(on.ids, plain.ids)


def test_gate_state_without_snap_radius_loads_with_snapping_off():
    gate = FactGate(4)
    gate.fit(torch.randn(6, 4), 0.5, 0.5)
    state = {k: v for k, v in gate.state_dict().items() if k != "snap_radius"}  # an older checkpoint
    again = FactGate(4)
    again.load_state_dict(state)
    assert torch.equal(again.queries, gate.queries) and again.active and not again.snapping


@pytest.mark.parametrize("snap", [-0.5, float("nan")])
def test_bad_snap_is_refused(snap):
    with pytest.raises(UserError, match="snap="):
        MoMEConfig(snap=snap)
    with pytest.raises(UserError, match="per-question"):
        MoMEConfig(snap=0.5, per_token=True)
    assert MoMEConfig(snap=float("inf")).snap == float("inf")


def test_training_templates_are_disjoint_from_the_held_out_ones(tiny_llama_dir):
    assert not set(TRAIN_TEMPLATES) & set(CODE_TEMPLATES)
    assert not set(TRAIN_TEMPLATES.values()) & set(CODE_TEMPLATES.values())
    data = make_data(tiny_llama_dir, n=6)
    data.hparams.train_paraphrases = True
    data.setup()
    assert len(data.facts) == 6 and len(data.train_examples) == 6 * (1 + len(TRAIN_TEMPLATES))
    ids = [e.fact_id for e in data.train_examples + data.heldout_examples]
    assert len(set(ids)) == len(ids)
    fact_ids = {f.id for f in data.facts}
    for e in data.train_examples[6:]:
        assert e.source_id in fact_ids
        source = next(x for x in data.train_examples if x.fact_id == e.source_id)
        assert e.answer_ids == source.answer_ids and e.prompt_ids != source.prompt_ids


def test_tuning_with_snap_and_training_rewordings_round_trips(tiny_llama_dir, tmp_path):
    cfg = make_config(aux_weight=0.0, gate=0.0, snap=float("inf"))
    module, data = make_module(tiny_llama_dir, mome=cfg), make_data(tiny_llama_dir, n=8)
    data.hparams.train_paraphrases = True
    fit(module, data, epochs=2, tmp_path=tmp_path, val_every=5)
    mome = module.model.eval()
    gate = mome.router.gate
    assert gate.snapping and not gate.active and gate.queries.shape == (8, 16)  # the facts' own queries
    train = data.train_examples
    for e in train[8:]:  # a rewording trains on its fact's experts
        assert torch.equal(module.cached_ids[e.fact_id], module.cached_ids[e.source_id])
    b = collate_examples(train, data.tokenizer.pad_token_id)
    routing = mome.route(b["input_ids"], b["attention_mask"], b["prompt_mask"])
    rows = nearest(routing.queries.flatten(1), gate.queries)[1]
    facts = torch.tensor([e.fact_id for e in train[:8]])
    assert torch.equal(routing.ids, module.cached_ids[facts[rows]])  # every question: its nearest fact's
    assert torch.equal(routing.ids[:8], module.cached_ids[facts])  # a fact snaps to itself

    save_mome(mome, tmp_path / "ckpt", backbone_name=tiny_llama_dir)
    again = load_mome(tiny_llama_dir, tmp_path / "ckpt").eval()
    assert again.config.snap == float("inf")
    assert torch.equal(again.router.gate.snap_radius, gate.snap_radius)
    assert torch.equal(again.route(b["input_ids"], b["attention_mask"], b["prompt_mask"]).ids, routing.ids)


def test_training_rewordings_ids_and_other_questions():
    facts = [Fact(0, CODE_QUESTION.format(entity="the red river"), "AB12"), Fact(1, "Who wrote it?", "X")]
    out = training_rewordings(facts, first_id=10)
    assert [source for source, _ in out] == [0] * len(TRAIN_TEMPLATES)  # a user's question: no entity
    assert [f.id for _, f in out] == [10 + 2 * j for j in range(len(TRAIN_TEMPLATES))]
    assert out[0][1] == Fact(10, "Give me the code of the red river.", "AB12")
