"""Speed and memory of the decoding heads, measured side by side in one run (issue 3 targets).

Benchmark model: Llama-style, 16 layers, hidden 512, intermediate 1376, vocab 32000, random weights,
fp32, CPU. Prints ratios; nothing is asserted.

    python benchmarks/decoding_speed.py               # everything (a few minutes on 2 cores)
    python benchmarks/decoding_speed.py --only step   # steady-state decode step ratios only

Sections:
- step:   one steady-state decode step (forward with KV cache, 64-token prompt, batch 1 + head) for
          greedy, SLED (k=50, all 16 layers), a literal reference-style SLED (one lm_head call per
          layer, materialised L x k x V gradients), DoLa 'high', and DoLa with one lm_head call per
          layer (as HF 4.52 did);
- batch:  decode tokens/s at batch 8 over batch 1 for each head;
- mc:     multiple-choice choices/s, vectorised vs the references' per-position loop (same scores);
- memory: peak RSS of one SLED step, 32 layers, vocab 128256: fast at k=100, literal at k=10.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding.dola import DoLa  # noqa: E402
from decoding.greedy import Greedy  # noqa: E402
from decoding.layers import layer_logits  # noqa: E402
from decoding.mc import score_continuations  # noqa: E402
from decoding.models import cache_kwargs, output_cache  # noqa: E402
from decoding.sled import SLED  # noqa: E402


def bench_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def literal_sled(early, mature, k=50, rate=2.0, lb=-1000.0):
    """Reference-style SLED step for batch 1: materialised (L, k, V) gradients, cosine_similarity."""
    v = mature.shape[-1]
    p_n = F.softmax(mature, -1)
    topk = p_n.topk(k).indices[0]
    p_l = F.softmax(early, -1)  # (L, V)
    div = (early - mature).float()
    eye = torch.zeros(k, v).scatter_(1, topk[:, None], 1.0)
    grads = (p_l[:, None] - eye[None]).float()  # (L, k, V)
    cos = F.cosine_similarity(grads, div[:, None], dim=-1)
    m = (cos * (cos > 0)) ** 2
    s = m.sum(-1, keepdim=True)
    p_layer = torch.where(s != 0, m / s.clamp_min(1e-30), 0)
    w = s / s.sum() if s.sum() != 0 else s
    p_lat = torch.zeros(v).index_put_((topk,), (w * p_layer).sum(0))
    z = mature - rate * (p_n - p_lat)
    return torch.full_like(mature, lb).scatter_(-1, topk[None], z[:, topk])


def per_layer_step(model, ids, cache, layers):
    """Forward + one lm_head call per layer at the last position (the references' projection)."""
    out = model(input_ids=ids, **cache_kwargs(cache), use_cache=True, output_hidden_states=True)
    head = model.get_output_embeddings()
    early = torch.cat([head(out.hidden_states[i][:, -1]) for i in layers])  # (L, V) batch 1
    return early, out.logits[:, -1], output_cache(out)


def time_steps(model, prompt, method, steps):
    """Median seconds of one decode step after a prefill of ``prompt``."""
    with torch.no_grad():
        ids, cache, times = prompt, None, []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            if method["kind"] == "fast":
                x, cache = layer_logits(model, ids, method["layers"], past_key_values=cache)
                nxt = method["head"](x).argmax(-1, keepdim=True)
            else:
                early, mature, cache = per_layer_step(model, ids, cache, method["layers"])
                nxt = method["step"](early, mature).argmax(-1, keepdim=True)
            if i > 0:  # skip the prefill
                times.append(time.perf_counter() - t0)
            ids = nxt.reshape(-1, 1)
    return statistics.median(times)


def section_step(model, reps: int, steps: int) -> None:
    prompt = torch.randint(0, 32000, (1, 64), generator=torch.Generator().manual_seed(1))
    n = 16
    high = list(range(8, 16, 2))

    def hf_dola(early, mature):
        return DoLa(list(range(len(high))))(torch.cat([early, mature.float()])[:, None])

    methods = {
        "greedy": {"kind": "fast", "layers": [], "head": Greedy()},
        "sled": {"kind": "fast", "layers": list(range(n)), "head": SLED(evolution_scale=50)},
        "sled_literal": {"kind": "slow", "layers": list(range(n)), "step": literal_sled},
        "dola_high": {"kind": "fast", "layers": high, "head": DoLa("high")},
        "dola_per_layer_lm_head": {"kind": "slow", "layers": high, "step": hf_dola},
    }
    res = {k: [] for k in methods}
    for _ in range(reps):  # interleaved so that machine load hits every method alike
        for name, m in methods.items():
            res[name].append(time_steps(model, prompt, m, steps))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"[step] batch 1, 64-token prompt, median of {reps} x {steps} decode steps")
    for k, v in med.items():
        print(f"  {k:24s} {v * 1e3:8.2f} ms/step   ratio vs greedy {v / med['greedy']:.2f}x")


def section_batch(model, reps: int, steps: int) -> None:
    heads = {
        "greedy": ([], Greedy()),
        "sled": (list(range(16)), SLED(evolution_scale=50)),
        "dola_high": (list(range(8, 16, 2)), DoLa("high")),
    }
    prompts = {
        b: torch.randint(3, 32000, (b, 64), generator=torch.Generator().manual_seed(2)) for b in (1, 8)
    }
    res = {(h, b): [] for h in heads for b in (1, 8)}
    for _ in range(reps):  # interleaved
        for name, (layers, head) in heads.items():
            for b in (1, 8):
                m = {"kind": "fast", "layers": layers, "head": head}
                res[name, b].append(b / time_steps(model, prompts[b], m, steps))
    print(f"[batch] steady-state decode tokens/s, 64-token prompts, median of {reps} x {steps} steps")
    for name in heads:
        t1, t8 = statistics.median(res[name, 1]), statistics.median(res[name, 8])
        print(f"  {name:10s} b1 {t1:7.1f} tok/s  b8 {t8:7.1f} tok/s  ratio {t8 / t1:.2f}x")


def section_mc(model) -> None:
    from decoding.mc import truthfulqa_prompt
    from decoding.tiny import train_tokenizer

    tok = train_tokenizer(384)  # any tokenizer: ids < 32000
    prefix = truthfulqa_prompt("What is the code of the city where the river was discovered?")
    choices = [" 42 is the number.", " I have no comment.", " the river of the capital.", " A true answer."]
    head = SLED(evolution_rate=2.0, evolution_scale=50, evolution_lower_bound=-100.0, op_T=1)
    timed = {}
    for name, kw in (("vectorised+prefix KV", {}), ("vectorised", {"reuse_prefix": False})):
        t0 = time.perf_counter()
        timed[name] = score_continuations(model, tok, prefix, choices, head, **kw)
        timed[name + " s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = []
    with torch.no_grad():
        for c in choices:  # the references' lm_score: one forward, then position by position
            ids = tok(prefix + c, return_tensors="pt").input_ids
            k = len(tok(prefix).input_ids)
            out = model(ids, output_hidden_states=True)
            lm = model.get_output_embeddings()
            s = 0.0
            for pos in range(k - 1, ids.shape[1] - 1):
                early = torch.stack([lm(out.hidden_states[i][0, pos]) for i in range(16)])
                s += float(literal_sled(early, out.logits[0, pos][None], lb=-100.0)[0, ids[0, pos + 1]])
            slow.append(s)
    t_slow = time.perf_counter() - t0
    n_tok = len(tok(prefix).input_ids)
    print(f"[mc] SLED k=50, TruthfulQA 6-shot prompt ({n_tok} tokens), {len(choices)} choices")
    print(f"  per-position loop (reference style) {len(choices) / t_slow:6.2f} choices/s")
    for name in ("vectorised", "vectorised+prefix KV"):
        t = timed[name + " s"]
        diff = (timed[name] - torch.tensor(slow, dtype=torch.float64)).abs().max().item()
        print(
            f"  {name:34s} {len(choices) / t:6.2f} choices/s  ratio {t_slow / t:5.2f}x  "
            f"max |score diff| {diff:.1e}"
        )


MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from decoding.sled import SLED
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from decoding_speed import literal_sled
L, V, k, which = 32, 128256, int(sys.argv[2]), sys.argv[3]
x = torch.randn(L + 1, 1, V, generator=torch.Generator().manual_seed(0)) * 3

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = rss("VmRSS")
if which == "fast":
    SLED(evolution_scale=k)(x)
else:
    literal_sled(x[:-1, 0], x[-1], k=k)
print(rss("VmHWM") - before)
"""


def section_memory() -> None:
    root = str(Path(__file__).resolve().parents[1])
    print("[memory] one SLED step, 32 layers, V=128256, fp32: peak RSS increase over the inputs")
    for which, k in (("fast", 100), ("literal", 10)):
        cmd = [sys.executable, "-c", MEMORY_CHILD, root, str(k), which]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peak = float(out.stdout.strip().splitlines()[-1])
        dense = 32 * k * 128256 * 4 / 2**20
        print(f"  {which:8s} k={k:3d}: {peak:7.0f} MiB   (an L x k x V fp32 tensor is {dense:.0f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["step", "batch", "mc", "memory"], default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    model = bench_model() if args.only != "memory" else None
    if args.only in (None, "step"):
        section_step(model, args.reps, args.steps)
    if args.only in (None, "batch"):
        section_batch(model, max(2, args.reps // 2), args.steps)
    if args.only in (None, "mc"):
        section_mc(model)
    if args.only in (None, "memory"):
        section_memory()
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
