"""Speed of the decoding heads on a real model's shape, each against greedy and against its own floor.

Model: ``smollm2:135m-instruct`` by default (30 blocks, hidden 576, vocabulary 49152, tied embeddings),
float32, CPU. Heads, with the generation presets (``decoding.presets``): greedy; DoLa 'low' (layers
2, 4, ..., 14 on this tied model) and 'high' (15, 17, ..., 29); SLED over all 30 early layers 0..29,
which is also the SLED reference's default candidate set (its ``--early-exit-layers`` default covers
every layer); ``sled-high``: SLED over DoLa's 'high' layers, to show how the cost follows the number
of candidate layers |C|.

Sections (interleaved variants, medians over repeats; nothing is asserted):

- step: one steady-state decode step (KV cache, 64-token random prompt, batch 1 and 8), timed with
  ``decoding_speed.time_steps``. In the same loop each head's **floor** is timed piece by piece:
  the greedy step + one stacked lm_head GEMM over the |C| x B candidate rows + the head's maths
  alone (on real per-layer logits of the prompt). Each head is reported as a ratio to greedy and
  to its floor (target <= 1.15x the floor).
- mc: multiple-choice items per second on the shipped sets (``factual_mc.csv`` with the 6-shot
  prompt and the TruthfulQA presets, ``factual_factor.csv`` with the FACTOR presets).

    python benchmarks/heads_speed_real.py --threads 2
    python benchmarks/heads_speed_real.py --threads 2 --only step --reps 7 --json /tmp/speed.json
    python benchmarks/heads_speed_real.py --model tiny:llama --reps 2 --steps 3 --mc-items 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding_speed import time_steps  # noqa: E402

from decoding.dola import dola_candidates  # noqa: E402
from decoding.layers import LayerLogits, layer_logits, lm_head_of, model_info  # noqa: E402
from decoding.presets import head_for_task  # noqa: E402

HEAD_KEYS = ("greedy", "dola-low", "dola-high", "sled", "sled-high")
TARGET = 1.15


def make_head(key: str, task: str, num_layers: int, tied: bool):
    """Head ``key`` with ``task``'s presets (``sled-high``: SLED on DoLa's 'high' layers)."""
    if key.startswith("dola-"):
        return head_for_task("dola", task, dola_layers=key.removeprefix("dola-"))
    if key == "sled-high":
        return head_for_task("sled", task, layers=list(dola_candidates("high", num_layers, tied)))
    return head_for_task(key, task)


def median_seconds(fn: Callable[[], object], calls: int) -> float:
    """Median wall seconds of ``calls`` calls of ``fn`` after one warm-up call."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def section_step(model, keys: list[str], batches: list[int], reps: int, steps: int, prompt_len: int) -> dict:
    n, tied = model_info(model)
    vocab, d = lm_head_of(model).weight.shape
    gen = torch.Generator().manual_seed(2)
    prompts = {b: torch.randint(3, vocab, (b, prompt_len), generator=gen) for b in batches}
    heads = {k: make_head(k, "generation", n, tied) for k in keys}
    layers = {k: h.required_layers(n, tied) for k, h in heads.items()}
    inputs = {}  # real per-layer logits of each prompt's last position, for the maths-alone timing
    with torch.no_grad():
        for b in batches:
            x, _ = layer_logits(model, prompts[b], list(range(n)))
            inputs[b] = x
    lm_head = lm_head_of(model)
    res: dict[tuple, list[float]] = {}
    for _ in range(reps):  # interleaved: machine load hits every variant alike
        for b in batches:
            for k, head in heads.items():
                m = {"kind": "fast", "layers": list(layers[k]), "head": head}
                res.setdefault((k, b, "step"), []).append(time_steps(model, prompts[b], m, steps))
                if not layers[k]:
                    continue
                h = torch.randn(len(layers[k]), b, d)  # (|C|, B, d) stacked candidate rows
                res.setdefault((k, b, "gemm"), []).append(median_seconds(lambda h=h: lm_head(h), steps))
                x = inputs[b]
                xs = LayerLogits(x.select(layers[k]), x.mature, layers[k], n, tied)  # (|C|, B, V), (B, V)
                maths = median_seconds(lambda head=head, xs=xs: head(xs).argmax(-1), steps)
                res.setdefault((k, b, "maths"), []).append(maths)
    med = {key: statistics.median(v) for key, v in res.items()}
    rows = {}
    print(
        f"[step] {n} blocks, hidden {d}, vocab {vocab}, tied {tied}, fp32, {prompt_len}-token random prompt, "
        f"median of {reps} reps x {steps} steps; floor = greedy step + stacked GEMM + head maths, each alone"
    )
    cols = ("|C|", "B", "ms/step", "x greedy", "floor", "x floor", "GEMM ms", "maths ms")
    print(f"  {'head':10s} " + " ".join(f"{c:>8s}" for c in cols))
    for b in batches:
        greedy = med[("greedy", b, "step")]
        for k in keys:
            step = med[(k, b, "step")]
            gemm, maths = med.get((k, b, "gemm"), 0.0), med.get((k, b, "maths"), 0.0)
            floor = greedy + gemm + maths
            verdict = "" if k == "greedy" else ("  ok" if step / floor <= TARGET else f"  > {TARGET}x")
            values = (step * 1e3, step / greedy, floor * 1e3, step / floor, gemm * 1e3, maths * 1e3)
            print(f"  {k:10s} {len(layers[k]):8d} {b:8d} " + " ".join(f"{v:8.2f}" for v in values) + verdict)
            rows[f"{k}/b{b}"] = {
                "candidates": len(layers[k]),
                "batch": b,
                "ms_step": step * 1e3,
                "tokens_per_s": b / step,
                "x_greedy": step / greedy,
                "floor_ms": floor * 1e3,
                "x_floor": step / floor,
                "gemm_ms": gemm * 1e3,
                "maths_ms": maths * 1e3,
                "head": repr(heads[k]).replace(", last_choice=None", ""),
            }
    return rows


def section_mc(model, tok, keys: list[str], items: int, reps: int) -> dict:
    import decoding
    from decoding.mc import evaluate_factor, evaluate_truthfulqa
    from decoding.mc_datasets import load_factor, load_truthfulqa
    from decoding.presets import task_defaults

    n, tied = model_info(model)
    data = Path(decoding.__file__).parent / "data"
    sets = {
        "truthfulqa-mc": (load_truthfulqa(data / "factual_mc.csv")[:items], evaluate_truthfulqa),
        "factor": (load_factor(data / "factual_factor.csv")[:items], evaluate_factor),
    }
    res: dict[tuple, list[float]] = {}
    with torch.no_grad():
        for task, (subset, evaluate) in sets.items():  # warm-up, not timed
            evaluate(model, tok, subset[:1], make_head("sled", task, n, tied), progress=False)
        for _ in range(reps):  # interleaved
            for task, (subset, evaluate) in sets.items():
                post = task_defaults(task)["post_softmax"]
                for k in keys:
                    head = make_head(k, task, n, tied)
                    t0 = time.perf_counter()
                    evaluate(model, tok, subset, head, post, progress=False)
                    res.setdefault((task, k), []).append(len(subset) / (time.perf_counter() - t0))
    print(
        f"[mc] items/s on the first {items} items of each shipped set (6-shot TruthfulQA prompt), "
        f"median of {reps} reps; task presets"
    )
    rows = {}
    for task in sets:
        greedy = statistics.median(res[(task, "greedy")])
        for k in keys:
            rate = statistics.median(res[(task, k)])
            cost = f"{rate:7.3f} items/s ({1 / rate:6.2f} s/item), x greedy {greedy / rate:5.2f}"
            print(f"  {task:14s} {k:10s} {cost}")
            rows[f"{task}/{k}"] = {"items_per_s": rate, "s_per_item": 1 / rate, "x_greedy": greedy / rate}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2:135m-instruct")
    p.add_argument("--only", choices=["step", "mc"], default=None)
    p.add_argument("--heads", default=",".join(HEAD_KEYS), help=f"subset of {','.join(HEAD_KEYS)}")
    p.add_argument("--reps", type=int, default=5, help="interleaved repeats of the step section")
    p.add_argument("--steps", type=int, default=8, help="decode steps (and calls) per timing")
    p.add_argument("--batches", default="1,8", help="batch sizes of the step section")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--mc-items", type=int, default=4, help="items per set in the mc section")
    p.add_argument("--mc-reps", type=int, default=3, help="interleaved repeats of the mc section")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the numbers and provenance here")
    args = p.parse_args()
    keys = [k.strip() for k in args.heads.split(",") if k.strip()]
    bad = [k for k in keys if k not in HEAD_KEYS]
    if bad:
        p.error(f"--heads: unknown {bad}; choose from {','.join(HEAD_KEYS)}")
    keys = ["greedy", *(k for k in keys if k != "greedy")]  # the baseline of every ratio
    if args.threads:
        torch.set_num_threads(args.threads)
    from decoding.models import load_causal_lm, load_tokenizer, resolve_model_path
    from decoding.provenance import environment, file_sha256

    model = load_causal_lm(args.model, dtype="float32").eval()
    tok = load_tokenizer(args.model)
    weights = Path(resolve_model_path(args.model)) / "model.safetensors"
    env = environment()
    sha = file_sha256(weights) if weights.exists() else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU path {env['cpu_capability']}")
    print(f"model {args.model}, model.safetensors sha256 {sha}")
    out = {"settings": vars(args), "environment": env, "safetensors_sha256": sha}
    if args.only in (None, "step"):
        batches = [int(b) for b in args.batches.split(",")]
        out["step"] = section_step(model, keys, batches, args.reps, args.steps, args.prompt_len)
    if args.only in (None, "mc"):
        out["mc"] = section_mc(model, tok, keys, args.mc_items, args.mc_reps)
    if args.json:
        from decoding.run_folder import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
