"""Expert-usage balance: the report by hand, random assignment (formula == simulation), key placement,
and a two-phase run on the tiny backbone that beats random assignment with margin."""

from __future__ import annotations

import warnings

import pytest
import torch

from memexp.mome import MoMEConfig
from memexp.mome.expert_balance import (
    place_keys,
    random_assignment,
    simulate_random_assignment,
    usage_report,
    warn_if_shared,
)
from memexp.mome.index import exact_topk


def test_usage_report_by_hand():
    ids = torch.tensor(
        [
            [0, 1],  # shares 1 with row 1, and both of its experts with row 2
            [1, 2],  # shares 1; expert 2 is its own
            [0, 1],
            [3, 3],  # a repeat counts once; nothing shared
        ]
    )
    r = usage_report(ids, num_experts=6)
    assert r["distinct_experts"] == 4
    assert r["max_usage"] == 3
    assert r["sharing_any"] == pytest.approx(3 / 4)
    assert r["sharing_all"] == pytest.approx(2 / 4)  # rows 0 and 2
    assert r["no_private"] == pytest.approx(2 / 4)  # rows 0 and 2; row 1 owns expert 2
    assert usage_report(ids, num_experts=6, max_pairs=3)["sharing_all"] != r["sharing_all"]  # NaN: skipped


def test_random_assignment_formula_matches_simulation():
    n, k, e = 40, 4, 96  # crowded, so every statistic is far from 0 and 1
    formula = random_assignment(n, k, e)
    sim = simulate_random_assignment(n, k, e, trials=300, seed=0)
    assert sim["distinct_experts"] == pytest.approx(formula["distinct_experts"], rel=0.02)
    for name in ("sharing_any", "no_private"):
        assert sim[name] == pytest.approx(formula[name], abs=0.03), name
    # the demo's shape: 200 facts x 8 of 4,096 experts
    demo = random_assignment(200, 8, 4096)
    assert demo["distinct_experts"] == pytest.approx(1325, abs=2)
    assert 0.95 < demo["sharing_any"] < 0.96 and demo["sharing_all"] < 1e-20
    tiny = random_assignment(3, 2, 2)  # every fact takes both experts
    assert tiny["distinct_experts"] == 2 and tiny["sharing_all"] == 1.0


def test_placed_keys_make_each_query_select_its_own_experts():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(60, 8, generator=g)  # (M, d)
    keys = torch.randn(256, 8, generator=g) * 8**-0.5  # (E, d)
    ids = place_keys(queries, keys, k=4)
    assert torch.unique(ids).numel() == 240  # 60 x 4 slots fit in 256 experts: nothing shared
    routed = exact_topk(queries, keys, 4)[1]
    assert torch.equal(routed.sort(1).values, ids.sort(1).values)  # the router now picks exactly them


def test_placement_respects_the_capacity_when_the_bank_is_small():
    g = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(100, 8, generator=g), torch.randn(64, 8, generator=g)
    ids = place_keys(queries, keys, k=4)  # 400 slots over 64 experts: at most ceil(400/64) = 7 each
    assert torch.bincount(ids.reshape(-1), minlength=64).max() <= 7
    assert all(row.unique().numel() == 4 for row in ids)


def test_a_bank_too_small_for_its_facts_warns_with_the_size_that_fits():
    with pytest.warns(UserWarning, match=r"num_experts=1024.*num_experts >= 8000"):
        warn_if_shared(1000, 8, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_shared(128, 8, 1024)  # exactly full: every fact still owns its experts


def _run(tiny_llama_dir, tmp_path, balance_keys: bool):
    from test_mome_module import Snapshots, fit, make_data, make_module

    cfg = MoMEConfig(
        num_experts=256, k=4, rank=2, sites=["model.layers.1.mlp.down_proj"], query_layer=1, key_dim=16
    )
    module = make_module(tiny_llama_dir, mome=cfg, balance_keys=balance_keys)
    data, snaps = make_data(tiny_llama_dir, n=40), Snapshots()
    fit(module, data, epochs=2, tmp_path=tmp_path, val_every=5, callbacks=[snaps])  # phase 1, phase 2
    fact_ids = torch.tensor([e.fact_id for e in data.train_examples])
    return module, usage_report(module.cached_ids[fact_ids], 256), len(fact_ids), snaps.epochs


def test_two_phase_run_beats_random_assignment(tiny_llama_dir, tmp_path):
    module, report, n, _ = _run(tiny_llama_dir, tmp_path, balance_keys=True)
    chance = random_assignment(n, 4, 256)  # ~40 x 4 of 256: ~115 distinct, 90% of facts sharing
    assert report["distinct_experts"] >= 1.2 * chance["distinct_experts"]
    assert report["sharing_all"] == 0.0 and report["no_private"] == 0.0
    # the cache is what the frozen router selects through the phase-2 index
    batch = next(module._fact_batches(module.trainer.datamodule.train_examples))
    routing = module.model.route(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"])
    assert torch.equal(routing.ids, module.cached_ids[batch["fact_ids"]])


def test_without_balance_keys_the_keys_stay_as_phase_1_left_them(tiny_llama_dir, tmp_path):
    _, report, _, (after1, after2) = _run(tiny_llama_dir, tmp_path, balance_keys=False)
    assert torch.equal(after1["router.keys.weight"], after2["router.keys.weight"])
    assert report["distinct_experts"] > 0
