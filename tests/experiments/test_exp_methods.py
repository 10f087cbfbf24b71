"""Method registry: known methods build the right modules; unknown ones and a missing MoME fail clearly."""

from __future__ import annotations

import pytest
import torch
from exp_helpers import QUICK_MODEL, TINY_MOME, tiny_train

from decoding.head_spec import parse_head_spec
from decoding.models import load_tokenizer
from experiments.cell import read_rows, run_cell
from experiments.code_facts import code_task, corrupt
from experiments.methods import (
    available_methods,
    build_method,
    check_method,
    check_method_options,
    register_method,
)
from memexp.data import collate_examples, tokenize_fact
from memexp.fact_eval import evaluate_facts, fact_columns


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown method 'ewc'.*\['full', 'lora', 'mome', 'mome_gate'\]"):
        check_method("ewc")


def test_full_trains_every_weight_and_lora_only_the_adapter():
    full = build_method("full", QUICK_MODEL, 0)
    lora = build_method("lora", QUICK_MODEL, 0, {"lora_r": 2})
    assert all(p.requires_grad for p in full.parameters())
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_registering_a_method_makes_it_buildable():
    register_method("probe-only", lambda backbone, seed, options: ("built", backbone, seed, options))
    try:
        assert build_method("probe-only", "b", 3, {"x": 1}) == ("built", "b", 3, {"x": 1})
        assert "probe-only" in available_methods()
    finally:
        from experiments import methods

        methods._REGISTRY.pop("probe-only")


def test_mome_heads_use_the_routed_model_and_dera_lambda0_is_the_experts_off_backbone(tmp_path):

    task = code_task(8, 0, seed=0, code_len=2)
    train, corrupted = corrupt(task.train, 1.0)
    cfg = tiny_train(max_epochs=3, heads=["greedy", "dera:lam=0", "dera:lam=1"])
    run_cell(tmp_path / "c", "mome", QUICK_MODEL, train, [], corrupted, cfg, 0)
    rows = read_rows(tmp_path / "c" / "fact_evals.csv")
    assert all(r["exact/greedy"] == r["exact"] == r["exact/dera:lam=1"] for r in rows)
    # the trained experts change the model; DeRa at lambda 0 is greedy decoding with the experts off
    module = build_method("mome", QUICK_MODEL, 0, TINY_MOME)
    with torch.no_grad():
        for site in module.model.sites.values():
            site.B.weight.normal_(0, 1.0)
    tok = load_tokenizer(QUICK_MODEL)
    examples = [tokenize_fact(f, tok, "Q: {question}\nA:") for f in train]
    batch = collate_examples(examples, tok.pad_token_id)
    cols = evaluate_facts(module.model, [batch], {"d0": parse_head_spec("dera:lam=0")}, module.reference)
    with torch.no_grad(), module.model.experts_off():
        off = fact_columns(module(batch), batch["labels"])
    assert torch.equal(cols["exact/d0"], off["exact"])
    assert not torch.allclose(off["nll_sum"], cols["nll_sum"])  # the experts do change the model


def test_mome_gate_is_memory_experts_under_its_own_name_with_its_own_options():
    from memexp.mome.tuning import MoMETuning

    options = {"mome": {"num_experts": 64, "k": 2, "rank": 2, "gate": 0.5}}
    check_method_options("mome_gate", options)
    with pytest.raises(ValueError, match="gate"):
        check_method_options("mome_gate", {"mome": {"gate": -1.0}})
    module = build_method("mome_gate", QUICK_MODEL, 0, options)
    assert isinstance(module, MoMETuning) and module.model.config.gate == 0.5
