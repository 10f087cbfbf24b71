"""The equal-tuning-budget table (benchmarks/tuning_budget_table.py): the selection rule and its table."""

from __future__ import annotations

import json

import pytest
from test_real_backbone_table import row, stage

from benchmarks.tuning_budget_table import choose, main, worst_deviation
from decoding.errors import UserError


def config(method: str, label: str, ratio: float, identical: float, seconds: float | None, hall: float = 0.0):
    names = ("mome_gate_off", "mome_gate_on") if method == "mome" else (method,)
    data = stage({n: row(hall, ratio, identical) for n in names}, seconds)
    return {"method": method, "label": label, "file": "-", "training": data["training"], "rows": data["rows"]}


def test_worst_deviation_counts_changed_greedy_answers():
    assert worst_deviation(row(0.0, 1.02, 1.0)["compare"]) == pytest.approx(0.02)
    assert worst_deviation(row(0.0, 0.97, 1.0)["compare"]) == pytest.approx(0.03)
    assert worst_deviation(row(0.0, 1.0, 0.75)["compare"]) == pytest.approx(0.25)
    assert worst_deviation(row(0.0, 1.02, 0.0)["compare"], answers=False) == pytest.approx(0.02)


def test_rule_picks_the_least_interfering_config_that_reached_zero():
    near = config("lora", "near", 1.01, 1.0, seconds=None, hall=0.04)  # closest to 1, but never reached 0%
    slow = config("lora", "slow", 1.05, 1.0, seconds=300.0)
    fast = config("lora", "fast", 1.05, 1.0, seconds=100.0)  # the same deviation: the faster wins the tie
    far = config("lora", "far", 1.30, 1.0, seconds=50.0)
    assert choose([near, slow, far, fast])["label"] == "fast"
    changed = [config("lora", f"lr{r}", r, 0.0, seconds=s) for r, s in ((1.6, 100.0), (1.1, 200.0))]
    assert choose(changed)["label"] == "lr1.1"  # every answer changed: the ratios break the tie, not speed
    assert (
        choose([config("full", "a", 1.0, 1.0, None, 0.3), config("full", "b", 1.5, 0.0, None, 0.1)])["label"]
        == "b"
    )
    assert choose([]) is None


def test_mome_is_judged_with_the_gate_off():
    gated = config("mome", "gated", 1.5, 1.0, seconds=10.0)
    gated["rows"]["mome_gate_on"] = row(0.0, 1.0, 1.0)  # perfect gate-on row must not make it win
    other = config("mome", "other", 1.2, 1.0, seconds=10.0)
    assert choose([gated, other])["label"] == "other"


def test_table_counts_every_configuration_and_relates_times_to_the_chosen_lora(tmp_path, capsys):
    folders = {}
    for method, label, ratio, seconds in (
        ("lora", "lr-a", 1.3, 200.0),
        ("lora", "lr-b", 1.1, 400.0),
        ("full", "lr-a", 1.05, 100.0),
        ("mome", "try3", 1.5, 80.0),
    ):
        folders[method, label] = tmp_path / f"{method}_{label}"
        folders[method, label].mkdir()
        data = config(method, label, ratio, 1.0, seconds)
        (folders[method, label] / f"{method}.json").write_text(json.dumps(data))
    runs = [f"{m}:{lab}={p}" for (m, lab), p in folders.items()]
    argv = ["--out", str(tmp_path / "out"), *(a for r in runs for a in ("--run", r))]
    table = main([*argv, "--not-reached", "mome:try1", "--not-reached", "mome:try2"])
    assert table["methods"]["mome"] == {
        "tried": 3,
        "not_reached_unmeasured": ["try1", "try2"],
        "chosen": "try3",
    }
    assert table["methods"]["lora"]["chosen"] == "lr-b"  # less interference beats speed
    times = {(c["model"], c["config"]): c["time_vs_chosen_lora"] for c in table["columns"]}
    assert times["LoRA", "lr-a"] == pytest.approx(0.5) and times["MoME gate off", "try3"] == pytest.approx(
        0.2
    )
    md = (tmp_path / "out" / "budget.md").read_text()
    assert "- mome: 3 configurations tried, chosen: try3; not measured" in md
    assert json.loads((tmp_path / "out" / "budget.json").read_text()) == table
    assert "| chosen by the rule | no | **yes** | **yes** | **yes** | **yes** |" in md  # --run order
    capsys.readouterr()


@pytest.mark.parametrize(
    "bad", ["--run=lora:x", "--run=mome=somewhere", "--run=sgd:x=f", "--not-reached=lora"]
)
def test_bad_specs_are_refused_in_one_line(tmp_path, bad):
    with pytest.raises(UserError):
        main(["--out", str(tmp_path), "--run", f"lora:ok={tmp_path}", bad])
