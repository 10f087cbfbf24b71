"""Both experiments end to end with --quick, through their command lines (slow: minutes)."""

from __future__ import annotations

import json

import pytest

from experiments import hallucination_vs_loss, random_labels


@pytest.mark.slow
def test_random_labels_quick_end_to_end(tmp_path, capsys):
    args = ["--config", "configs/experiments/random_labels.yaml", "--quick", "--output_root", str(tmp_path)]
    random_labels.main([*args, "--wandb", "false"])
    root = tmp_path / "random_labels" / "quick"
    results = json.loads((root / "results.json").read_text())
    assert [(r["p"], r["method"]) for r in results["table"]] == [
        (p, m) for p in (0.0, 0.5, 1.0) for m in ("full", "lora", "mome")
    ]
    assert all(r["n_seeds"] == 3 for r in results["table"]) and len(results["seed_table"]) == 27
    assert len(results["image_table"]) == 6
    p0 = [r for r in results["table"] if r["p"] == 0.0]
    assert all(r["train_exact"] == 1.0 for r in p0)  # true answers are fitted
    full1 = next(r for r in results["table"] if r["p"] == 1.0 and r["method"] == "full")
    assert full1["train_exact"] == 1.0 and full1["heldout_after"] < full1["heldout_before"]
    full1 = next(r for r in results["image_table"] if r["p"] == 1.0 and r["method"] == "full")
    assert full1["train_exact"] > 0.9 and full1["heldout_after"] < 0.25  # random labels memorised, no skill
    for name in (
        "random_labels_curves",
        "random_labels_summary",
        "image_labels_curves",
        "image_labels_summary",
    ):
        assert (root / f"{name}.png").stat().st_size > 10_000
    assert "| p | method | n_seeds |" in (root / "report.md").read_text()
    summary = (root / "summary.md").read_text()
    assert all(f"- **{m}: " in summary for m in ("full", "lora", "mome"))
    with pytest.raises(SystemExit):
        random_labels.main([*args, "--wandb", "false"])
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_hallucination_vs_loss_quick_end_to_end(tmp_path):
    args = [
        "--config",
        "configs/experiments/hallucination_vs_loss.yaml",
        "--quick",
        "--output_root",
        str(tmp_path),
    ]
    hallucination_vs_loss.main([*args, "--wandb", "false"])
    root = tmp_path / "hallucination_vs_loss" / "quick"
    results = json.loads((root / "results.json").read_text())
    heads = {r["head"] for r in results["thresholds"]}
    assert {"greedy", "sled", "dola:dola_layers=low", "dera:lam=2"} <= heads
    assert {r["method"] for r in results["thresholds"]} == {"full", "lora", "mome"}
    greedy = [r for r in results["thresholds"] if r["head"] == "greedy"]
    assert all(r["exact_below_ln2"] in (None, 1.0) for r in greedy)  # the ln 2 bound holds
    assert all(r["safe_nll_sum"] is None or r["safe_nll_sum"] >= results["ln2"] for r in greedy)
    assert all(r["n_seeds"] == 3 for r in results["thresholds"])
    assert "- **mome / greedy: " in (root / "summary.md").read_text()
    assert (root / "hallucination_vs_loss.png").stat().st_size > 10_000
