"""Metrics of the head benchmarks (repetition of a continuation, paired bootstrap intervals, per-item MC
scores) and the factuality benchmark script end to end on a tiny model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from decoding.bootstrap import paired_bootstrap, resample_indices
from decoding.errors import UserError
from decoding.repetition import distinct_n, repeated_ngram_rate

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _literal_rep(ids: list[int], n: int) -> float | None:
    """The definition read literally: an n-gram counts if the same n tokens start at an earlier position."""
    starts = range(len(ids) - n + 1)
    if not starts:
        return None
    seen_before = [any(ids[j : j + n] == ids[i : i + n] for j in range(i)) for i in starts]
    return sum(seen_before) / len(starts)


def test_repetition_metrics_by_hand():
    loop = [1, 2, 3, 4] * 3  # 9 four-grams, 4 distinct; 11 bigrams, 4 distinct
    assert repeated_ngram_rate(loop, 4) == pytest.approx(5 / 9)
    assert distinct_n(loop, 2) == pytest.approx(4 / 11)
    assert repeated_ngram_rate(list(range(10)), 4) == 0.0 and distinct_n(list(range(10)), 2) == 1.0
    assert repeated_ngram_rate([7] * 6, 4) == pytest.approx(2 / 3)  # 3 grams, the first is new
    assert repeated_ngram_rate([1, 2, 3], 4) is None and distinct_n([1], 2) is None
    with pytest.raises(ValueError, match="n=0"):
        distinct_n([1, 2], 0)


def test_repetition_metrics_match_the_literal_definition():
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 30))]
        for n in (2, 4):
            assert repeated_ngram_rate(ids, n) == _literal_rep(ids, n)
            if len(ids) >= n:  # a gram is either new or a repeat
                assert repeated_ngram_rate(ids, n) == pytest.approx(1 - distinct_n(ids, n))


def test_bootstrap_matches_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(1)
    a, b = rng.random(50), (rng.random(50) > 0.4).astype(float)
    out = paired_bootstrap({"a": a, "b": b}, "a", n_boot=500, seed=3)
    idx = resample_indices(50, 500, seed=3)
    means_a = np.array([np.mean([a[i] for i in row]) for row in idx])
    means_b = np.array([np.mean([b[i] for i in row]) for row in idx])
    assert (out["b"]["low"], out["b"]["high"]) == pytest.approx(tuple(np.percentile(means_b, [2.5, 97.5])))
    diff = np.percentile(means_b - means_a, [2.5, 97.5])
    assert (out["b"]["diff"]["low"], out["b"]["diff"]["high"]) == pytest.approx(tuple(diff))
    assert out["b"]["diff"]["mean"] == pytest.approx(b.mean() - a.mean()) and "diff" not in out["a"]


def test_bootstrap_interval_agrees_with_the_normal_approximation():
    x = np.zeros(400)
    x[:120] = 1.0  # p = 0.3
    s = paired_bootstrap({"h": x}, n_boot=20_000, seed=0)["h"]
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert s["mean"] == pytest.approx(0.3)
    assert (s["high"] - s["low"]) / 2 == pytest.approx(half, rel=0.1)
    assert s["low"] < 0.3 < s["high"]


def test_paired_difference_detects_what_separate_intervals_cannot():
    base = (np.arange(200) % 2).astype(float)  # 50%
    better = base.copy()
    better[np.flatnonzero(base == 0)[:6]] = 1.0  # 6 of 200 items flipped to correct: +3 points
    out = paired_bootstrap({"greedy": base, "head": better, "same": base.copy()}, "greedy", seed=0)
    assert out["head"]["low"] < out["greedy"]["high"]  # the separate intervals overlap...
    assert (
        out["head"]["diff"]["low"] > 0 and out["head"]["diff"]["excludes_zero"]
    )  # ...the paired one does not
    same = out["same"]["diff"]
    assert (same["low"], same["high"], same["excludes_zero"]) == (0.0, 0.0, False)


def test_bootstrap_refuses_unpaired_or_non_finite_scores():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap({"a": [1.0, 0.0], "b": [1.0]}, "a")
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap({"a": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="baseline 'g'"):
        paired_bootstrap({"a": [1.0]}, "g")


def test_per_item_scores_average_to_the_totals_and_the_prompt_is_used(llama, monkeypatch):
    import decoding.mc as mc
    from decoding.greedy import Greedy
    from decoding.mc_datasets import FactorItem, TruthfulQAItem

    model, tok = llama
    items = [
        TruthfulQAItem("What is the code?", "42.", ["42.", "forty-two."], ["the river.", "A city."]),
        TruthfulQAItem("Who wrote?", "nobody.", ["nobody.", "no one."], ["the author.", "a city."]),
    ]
    rows: list[dict] = []
    out = mc.evaluate_truthfulqa(model, tok, items, Greedy(), per_item=rows, progress=False)
    for m in ("MC1", "MC2", "MC3"):
        assert out[m] == pytest.approx(np.mean([row[m] for row in rows]))
    assert mc.evaluate_truthfulqa(model, tok, items, Greedy(), progress=False) == out
    fac = [
        FactorItem("The code is", "42", ["7", "8", "9"]),
        FactorItem("The river is", "long", ["a", "b", "c"]),
    ]
    rows = []
    f = mc.evaluate_factor(model, tok, fac, Greedy(), per_item=rows, progress=False)
    hits = [row["correct"] for row in rows]
    assert f["accuracy"] == pytest.approx(np.mean(hits)) and set(hits) <= {0, 1}
    prefixes = []
    real = mc.score_continuations
    monkeypatch.setattr(
        mc, "score_continuations", lambda m, t, p, *a, **k: prefixes.append(p) or real(m, t, p, *a, **k)
    )
    mc.evaluate_truthfulqa(model, tok, items[:1], Greedy(), prompt=mc.zero_shot_prompt, progress=False)
    assert prefixes == ["Q: What is the code?\nA:"]


@pytest.fixture()
def factuality(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import heads_factuality

    return heads_factuality


def test_sweep_changes_one_sled_option_at_a_time(factuality):
    from decoding.presets import task_defaults

    for task in ("truthfulqa-mc", "factor"):
        preset = {**task_defaults(task)["sled"], "layers": None}
        for name, opts in factuality.sweep_points(task, 30).items():
            assert len(opts) == 1 and opts != {k: preset[k] for k in opts}, name
        layers = {k: v["layers"] for k, v in factuality.sweep_points(task, 30).items() if "layers" in v}
        assert layers == {
            "layers=0-14": list(range(15)),
            "layers=15-29": list(range(15, 30)),
            "layers=even": list(range(0, 30, 2)),
        }


def test_factuality_script_end_to_end_on_a_tiny_model(factuality, tmp_path):
    out = tmp_path / "run"
    argv = [
        "--out",
        str(out),
        "--model",
        "tiny:llama",
        "--limit",
        "2",
        "--sweep-limit",
        "1",
        "--n-boot",
        "50",
    ]
    argv += ["--max-new-tokens", "6", "--heads", "sled", "--threads", "1"]
    factuality._main(argv)
    result = json.loads((out / "results.json").read_text())
    assert set(result["tasks"]) == {"truthfulqa-mc", "factor", "open"}
    tqa = result["tasks"]["truthfulqa-mc"]
    assert tqa["head_order"] == ["greedy", "sled"] and len(tqa["heads"]["sled"]["items"]["MC2"]) == 2
    assert tqa["summary"]["MC1"]["sled"]["diff"]["low"] <= tqa["summary"]["MC1"]["sled"]["diff"]["high"]
    assert tqa["sweep"]["n"] == 1 and "alpha=0" in tqa["sweep"]["points"]
    assert len(result["tasks"]["open"]["heads"]["sled"]["texts"]) == 2
    assert result["provenance"]["safetensors_sha256"] and result["provenance"]["gguf_sha256"] is None
    md = (out / "results.md").read_text()
    assert md.index("## TruthfulQA") < md.index("## FACTOR") < md.index("## open") and "| `sled` |" in md
    from heads_report import render_markdown

    assert render_markdown(result) == md  # the saved JSON renders the same report
    assert (out / "heads.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="exists; choose a new folder or pass --overwrite"):
        factuality.parse_args(["--out", str(out)])
    with pytest.raises(UserError, match="unknown \\['beam'\\]"):
        factuality.parse_args(["--out", str(tmp_path / "new"), "--heads", "sled,beam"])
