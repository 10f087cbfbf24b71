"""Fact gate: memorised questions keep their experts, other questions get exactly the frozen backbone."""

from __future__ import annotations

import pytest
import torch
from test_mome_module import fit, make_config, make_data, make_module

from memexp.data import collate_examples
from memexp.mome import MoMEConfig
from memexp.mome.checkpoint import load_mome, save_mome
from memexp.mome.gate import FactGate, min_distances


def brute_force_radius(queries: torch.Tensor, rel: float) -> float:
    nearest = []
    for i in range(queries.shape[0]):
        d = [float((queries[i] - queries[j]).norm()) for j in range(queries.shape[0]) if j != i]
        nearest.append(min(d))
    return rel * float(torch.tensor(nearest).median())


def test_gate_distances_and_radius_against_brute_force():
    g = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    gate = FactGate(5)
    gate.fit(g, 0.5)
    assert float(gate.radius) == pytest.approx(brute_force_radius(g, 0.5), rel=1e-5)
    q = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    want = torch.tensor([min(float((qi - gj).norm()) for gj in g) for qi in q])
    torch.testing.assert_close(min_distances(q, g), want, atol=1e-5, rtol=1e-5)
    assert gate.open(g).all()  # a memorised query is at distance 0
    with pytest.raises(ValueError, match="gate=-1"):
        MoMEConfig(gate=-1)


def test_gated_mome_keeps_facts_and_leaves_other_questions_to_the_backbone(tiny_llama_dir, tmp_path):
    cfg = make_config(aux_weight=0.0, gate=0.5)
    module, data = make_module(tiny_llama_dir, mome=cfg), make_data(tiny_llama_dir, n=12)
    data.hparams.num_heldout = 12
    fit(module, data, epochs=3, tmp_path=tmp_path, val_every=5)
    mome = module.model.eval()
    gate = mome.router.gate
    assert gate.active and gate.queries.shape == (12, 16)
    assert float(gate.radius) == pytest.approx(brute_force_radius(gate.queries, 0.5), rel=1e-5)
    pad = data.tokenizer.pad_token_id

    def logits(examples, **kw):
        b = collate_examples(examples, pad)
        with torch.no_grad():
            mask, prompt = b["attention_mask"], b["prompt_mask"]
            return mome(b["input_ids"], attention_mask=mask, question_mask=prompt, **kw)

    train = data.train_examples
    ids = torch.tensor([e.fact_id for e in train])
    cached = logits(train, expert_ids=module.cached_ids[ids], expert_weights=module.cached_weights[ids])
    torch.testing.assert_close(logits(train).logits, cached.logits)  # the gate is open on every fact
    with mome.experts_off():
        base_train = logits(train).logits
    assert not torch.allclose(cached.logits, base_train)  # ... and the experts change their answers

    held = data.heldout_examples
    b = collate_examples(held, pad)
    queries = mome.route(b["input_ids"], b["attention_mask"], b["prompt_mask"]).queries.flatten(1)
    closed = min_distances(queries, gate.queries) > gate.radius
    assert closed.any()
    with mome.experts_off():
        base = logits(held).logits
    assert torch.equal(logits(held).logits[closed], base[closed])  # bit-identical to the backbone

    save_mome(mome, tmp_path / "ckpt", backbone_name=tiny_llama_dir)
    again = load_mome(tiny_llama_dir, tmp_path / "ckpt").eval()
    assert torch.equal(again.router.gate.queries, gate.queries)
    assert torch.equal(again.router.gate.radius, gate.radius)
