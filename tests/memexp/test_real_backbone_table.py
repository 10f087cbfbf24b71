"""The real-backbone table (benchmarks/real_backbone_table.py): assembly, resume, refusal; tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from memexp_helpers import QUICK_MODEL

from benchmarks.real_backbone_table import (
    LABELS,
    assemble,
    gate_off,
    lamini,
    main,
    stored,
)
from decoding.errors import UserError
from decoding.models import cache_kwargs, output_cache
from memexp.model_view import PromptRoutedLM

TINY_MOME = """
model:
  init_args:
    mome:
      num_experts: 64
      k: 4
      rank: 2
      scale: 4.0
      sites: ["model.layers.1.mlp.down_proj"]
      query_layer: 0
      key_dim: 16
      index: {kind: flat}
      gate: 0.5
    phase1_epochs: 1
    lr: 1.0e-2
    whiten_queries: false
    cache_frozen_layers: true
"""


def tiny_args(tmp_path, *extra: str) -> list[str]:
    config = tmp_path / "mome_tiny.yaml"
    config.write_text(TINY_MOME)
    return [
        *("--out", str(tmp_path / "out"), "--model", QUICK_MODEL, "--mome-config", str(config)),
        *("--facts", "6", "--heldout", "3", "--batch", "4", "--max-epochs", "2", "--val-every", "1"),
        *("--chunk-len", "16", "--max-chunks", "2", "--mc-sample", "2", "--questions", "3"),
        *("--max-new-tokens", "3", "--batch-size", "2", "--n-boot", "50", "--lora-r", "2"),
        *extra,
    ]


def compare_of(ratio: float, identical: float) -> dict:
    cell = {"ratio": ratio, "low": ratio - 0.001, "high": ratio + 0.001}
    return {
        "real_text_nll": cell,
        "mc1": cell,
        "mc2": cell,
        "identical_answers": {"fraction": identical, "low": identical, "high": identical},
    }


def stage(rows: dict, seconds: float | None, total: float = 100.0) -> dict:
    training = {
        "reached_zero": seconds is not None,
        "train_s_to_zero": seconds,
        "zero_epoch": None if seconds is None else 4,
        "train_s_total": total,
        "epochs": 5,
    }
    return {
        "training": training,
        "facts_before": {"hallucination": 1.0, "answer_nll": 6.0, "heldout_answer_nll": 6.5},
        "rows": rows,
    }


def row(hallucination: float, ratio: float, identical: float) -> dict:
    facts = {"hallucination": hallucination, "answer_nll": 0.1, "heldout_answer_nll": 6.5}
    return {"facts": facts, "compare": compare_of(ratio, identical)}


def test_lamini_claim_per_row():
    assert lamini(row(0.0, 1.005, 1.0), 0.4) == {
        "exact_recall": True,
        "ratios_within_1pct": True,
        "intervals_within_1pct": True,
        "time_ratio_ok": True,
    }
    verdict = lamini(row(0.02, 1.02, 0.98), None)
    assert not verdict["exact_recall"] and not verdict["ratios_within_1pct"]
    assert verdict["time_ratio_ok"] is None  # LoRA never reached 0%: no ratio to judge
    assert not lamini(row(0.0, 1.0, 0.9), 0.6)["ratios_within_1pct"]  # identical answers count too


def test_assemble_orders_rows_and_relates_times_to_lora(tmp_path):
    mome = stage({"mome_gate_off": row(0.0, 1.1, 0.5), "mome_gate_on": row(0.0, 1.0, 1.0)}, 30.0)
    (tmp_path / "mome.json").write_text(json.dumps(mome))
    (tmp_path / "full.json").write_text(json.dumps(stage({"full": row(0.0, 1.3, 0.0)}, 90.0)))
    table = assemble(tmp_path)  # no LoRA yet: no time ratio
    assert table["rows"]["mome_gate_on"]["time_vs_lora"] is None
    (tmp_path / "lora.json").write_text(json.dumps(stage({"lora": row(0.2, 1.2, 0.0)}, None, 300.0)))
    table = assemble(tmp_path)  # LoRA did not reach 0%: still none, and the cell says so
    assert table["rows"]["full"]["time_vs_lora"] is None
    md = (tmp_path / "table.md").read_text()
    assert "not reached: 300 s, 5 epochs" in md
    (tmp_path / "lora.json").write_text(json.dumps(stage({"lora": row(0.0, 1.2, 0.0)}, 120.0)))
    table = assemble(tmp_path)
    assert table["rows"]["mome_gate_on"]["time_vs_lora"] == pytest.approx(0.25)
    assert table["rows"]["mome_gate_on"]["lamini"]["time_ratio_ok"] is True
    assert table["rows"]["full"]["lamini"]["time_ratio_ok"] is False
    assert table["rows"]["lora"]["lamini"]["time_ratio_ok"] is None  # the reference itself
    header = (tmp_path / "table.md").read_text().splitlines()[0]
    order = [LABELS[n] for n in ("mome_gate_off", "mome_gate_on", "lora", "full")]
    assert header == "| metric | " + " | ".join(order) + " |"
    assert json.loads((tmp_path / "table.json").read_text()) == table


def test_stored_refuses_other_settings(tmp_path):
    path = tmp_path / "lora.json"
    assert stored(path, {"lr": 1e-3}) is None
    path.write_text(json.dumps({"stage_settings": {"lr": 1e-3, "facts": 10}, "rows": {}}))
    assert stored(path, {"lr": 1e-3, "facts": 10})["rows"] == {}
    with pytest.raises(UserError, match="facts"):
        stored(path, {"lr": 1e-3, "facts": 20})


def test_tiny_end_to_end_resumes_per_method_and_never_overwrites(tmp_path, capsys):
    table = main(tiny_args(tmp_path, "--methods", "mome", "lora"))
    out = tmp_path / "out"
    assert set(table["rows"]) == {"mome_gate_off", "mome_gate_on", "lora"}
    for name in ("base", "mome", "lora", "table"):
        assert (out / f"{name}.json").exists()
    mome = json.loads((out / "mome.json").read_text())
    assert mome["stage_settings"]["mome_config"]["mome"]["gate"] == 0.5
    for r in mome["rows"].values():
        assert set(r["compare"]) == {"real_text_nll", "mc1", "mc2", "identical_answers"}
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    capsys.readouterr()
    table = main(tiny_args(tmp_path, "--methods", "mome", "lora", "full"))  # adds full, keeps the rest
    log = capsys.readouterr().out
    assert "[mome]" in log and "exists: skipped" in log and "[base]" in log
    for name in ("base.json", "mome.json", "lora.json"):
        assert (out / name).stat().st_mtime_ns == written[name]
    assert set(table["rows"]) == {"mome_gate_off", "mome_gate_on", "lora", "full"}
    with pytest.raises(UserError, match="lr"):
        main(tiny_args(tmp_path, "--methods", "lora", "--lora-lr", "1e-2"))
    assert (out / "lora.json").stat().st_mtime_ns == written["lora.json"]


@pytest.fixture
def tiny_mome():
    from decoding.models import load_causal_lm
    from memexp.mome import MoMEConfig, MoMEModel

    torch.manual_seed(0)
    cfg = MoMEConfig(num_experts=16, k=2, rank=1, sites=["model.layers.1.mlp.down_proj"], query_layer=0)
    mome = MoMEModel(load_causal_lm(QUICK_MODEL), cfg).eval()
    for site in mome.sites.values():
        torch.nn.init.normal_(site.B.weight, std=0.5)  # experts that change the output
    return mome


def test_prompt_routed_view_routes_each_full_call_and_keeps_it_under_a_cache(tiny_mome):
    mome, view = tiny_mome, PromptRoutedLM(tiny_mome)
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        whole = mome(ids, question_mask=torch.ones_like(ids, dtype=torch.bool)).logits
        assert torch.equal(view(ids).logits, whole)  # no question end recorded: the whole input
        with mome.experts_off():
            assert not torch.allclose(mome(ids).logits, whole)
        prefix = mome.route(ids[:1, :4], question_mask=torch.ones(1, 4, dtype=torch.bool))
        step = view(ids[:1, :4], use_cache=True)  # a shared prefix, then a batch of continuations
        cache = output_cache(step)
        cache.batch_repeat_interleave(2)
        cached = view(ids[:, 4:5], **cache_kwargs(cache)).logits[:, -1]  # (2, V)
        inputs = torch.cat([ids[:1, :4].repeat(2, 1), ids[:, 4:5]], 1)  # (2, 5)
        fixed = {"expert_ids": prefix.ids.repeat(2, 1), "expert_weights": prefix.weights.repeat(2, 1)}
        assert torch.allclose(cached, mome(inputs, **fixed).logits[:, -1], atol=1e-5)


def test_gate_off_opens_the_gate_and_restores_it(tiny_mome):
    gate, dim = tiny_mome.router.gate, tiny_mome.config.key_dim
    gate.fit(torch.randn(3, dim), 0.5)
    radius = float(gate.radius)
    far = torch.full((2, dim), 100.0)
    assert not gate.open(far).any()
    with gate_off(tiny_mome):
        assert gate.open(far).all()
    assert not gate.open(far).any() and float(gate.radius) == radius > 0


def test_train_clock_excludes_validation_and_counts_the_epoch_that_reached_zero(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import mome_memorisation

    now = [0.0]
    monkeypatch.setattr(mome_memorisation, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    clock = mome_memorisation.TrainClock()
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=False, current_epoch=0)
    for epoch, rate in enumerate((1.0, 0.0)):  # each epoch: 10 s training, 5 s validation, 0.5 s after it
        trainer.current_epoch, trainer.callback_metrics = (
            epoch,
            {"val/hallucination_rate": torch.tensor(rate)},
        )
        clock.on_train_epoch_start(trainer, None)
        now[0] += 10
        clock.on_validation_start(trainer, None)
        now[0] += 5
        clock.on_validation_end(trainer, None)
        now[0] += 0.5
        clock.on_train_epoch_end(trainer, None)
    assert clock.to_zero_s == pytest.approx(20.5) and clock.zero_epoch == 1
    assert clock.train_s == pytest.approx(21.0)
    assert clock.val_s == pytest.approx(10.0) and clock.validations == 2
    trainer.state.fn = "validate"  # a validation outside fit neither stops the clock nor records
    clock.on_validation_start(trainer, None)
    clock.on_validation_end(trainer, None)
    assert clock.train_s == pytest.approx(21.0) and clock.validations == 2


def test_curves_from_logs_reads_every_validation_line_and_refuses_bad_input(tmp_path):
    from benchmarks.curves_from_logs import main as curves_main
    from benchmarks.curves_from_logs import read_points

    log = tmp_path / "run.log"
    log.write_text(
        "[mome] before: {...}\nbar 10%\r  epoch 1 train 208s hallucination 1.000\n"
        "  epoch 3 train 298.5s hallucination 0.250\nepoch 5 train x hallucination 0\n"
    )
    assert read_points(log) == [(1, 208.0, 1.0), (3, 298.5, 0.25)]
    out = tmp_path / "c.png"
    curves_main([f"MoME={log}", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="exists"):
        curves_main([f"MoME={log}", "--out", str(out)])
    with pytest.raises(UserError, match="LABEL=PATH"):
        curves_main([str(log), "--out", str(tmp_path / "d.png")])
    (tmp_path / "empty.log").write_text("nothing\n")
    with pytest.raises(UserError, match="no 'epoch"):
        read_points(tmp_path / "empty.log")
