"""Factuality and repetition of the decoding heads on a real model, with paired bootstrap intervals.

Scores greedy, DoLa 'low', DoLa 'high' and SLED (each with the task's presets, ``decoding.presets``)
through the code path of ``decoding score`` (``decoding.mc.evaluate_truthfulqa`` / ``evaluate_factor``)
on the sets shipped in ``decoding/data/``:

- ``truthfulqa-mc``: ``factual_mc.csv`` (377 questions, TruthfulQA layout) -> MC1, MC2, MC3;
- ``factor``: ``factual_factor.csv`` (230 FACTOR items) -> accuracy;
- ``open``: ``open_prompts.txt`` (60 open-ended prompts, the model's chat template when it has one),
  ``--max-new-tokens`` tokens per prompt through ``decoding.generate`` -> rep-4 (fraction of 4-grams
  already seen earlier in the continuation) and distinct-2, per continuation (``decoding.repetition``).

Plus a SLED sweep, one factor at a time around the task's preset (``evolution_scale``,
``evolution_rate``, candidate layers), on the first ``--sweep-limit`` items. Every score is kept per
item; the 95% intervals are percentile-bootstrap intervals over items, and each head's difference to
greedy is bootstrapped on the same resamples (``decoding.bootstrap``). Output folder (written at the
end in one step; an existing one is refused unless ``--overwrite``): ``results.json`` (settings,
provenance, per-item scores, texts, summaries), ``results.md`` (tables) and ``heads.png``.

    python benchmarks/heads_factuality.py --out runs/heads_smollm2 --threads 2
    python benchmarks/heads_factuality.py --out runs/heads_smollm2 --threads 2 --sweep-limit 100
    python benchmarks/heads_factuality.py --out /tmp/h --model tiny:llama --limit 3 --sweep-limit 2
    python benchmarks/heads_factuality.py --out /tmp/h --tasks truthfulqa-mc --prompt zero-shot --limit 3
"""

from __future__ import annotations

import argparse
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import decoding  # noqa: E402
from decoding.errors import UserError, run_cli  # noqa: E402

DATA = Path(decoding.__file__).parent / "data"
HEAD_KEYS = ("greedy", "dola-low", "dola-high", "sled")
TASKS = ("truthfulqa-mc", "factor", "open")
METRICS = {"truthfulqa-mc": ("MC1", "MC2", "MC3"), "factor": ("accuracy",), "open": ("rep4", "distinct2")}
PROMPTS = ("six-shot", "zero-shot")
SWEEP_SCALES = {"truthfulqa-mc": (10, 20, 100), "factor": (5, 20, 50)}  # presets: 50 and 10
SWEEP_RATES = (0.0, 0.5, 1.0, 4.0)  # preset 2; 0 = the top-k cut alone, no evolution


class Clock:
    """Wall time and process CPU time (all threads) since creation; CPU time is what a busy machine
    inflates least, so runtime estimates for a quiet machine start from it."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def record(self, n: int) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {"seconds": wall, "s_per_item": wall / n, "cpu_seconds": cpu, "cpu_s_per_item": cpu / n}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder at the end")
    p.add_argument("--model", default="smollm2:135m-instruct", help="any decoding model name")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument(
        "--heads",
        default=",".join(HEAD_KEYS),
        help=f"comma-separated subset of {','.join(HEAD_KEYS)} (greedy, the baseline, is always run)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N items / prompts of every task")
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="score a seeded random sample of N items per MC task (kept in file order; --sample-seed)",
    )
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--sweep-limit", type=int, default=None, help="SLED sweep on the first N items (all)")
    p.add_argument("--no-sweep", action="store_true", help="skip the SLED sweep")
    p.add_argument(
        "--prompt",
        choices=PROMPTS,
        default="six-shot",
        help="TruthfulQA prefix: six-shot = the references' instruction + 6 demos; zero-shot = 'Q: ...\\nA:'",
    )
    p.add_argument(
        "--tqa-post-softmax",
        action="store_true",
        help="sum log_softmax'ed head outputs on truthfulqa-mc (default: raw sums, as the references)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per open-ended continuation")
    p.add_argument("--gen-batch", type=int, default=8, help="prompts generated together (left-padded)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="open generation, every head")
    p.add_argument("--no-chat-template", action="store_true", help="feed the open prompts as raw text")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--boot-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    args.tasks = _subset(args.tasks, TASKS, "--tasks")
    args.heads = ("greedy", *(h for h in _subset(args.heads, HEAD_KEYS, "--heads") if h != "greedy"))
    if args.sample is not None and args.limit is not None:
        raise UserError("--sample and --limit both pick items; pass one of them")
    for flag in ("limit", "sample", "sweep_limit", "max_new_tokens", "gen_batch", "n_boot", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} must be >= 1")
    if args.repetition_penalty <= 0:
        raise UserError(f"--repetition-penalty {args.repetition_penalty} must be > 0 (1 = off)")
    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists; choose a new folder or pass --overwrite to replace it")
    return args


def _subset(text: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UserError(f"{flag} {text!r}: unknown {bad or 'empty list'}; choose from {','.join(known)}")
    return names


def task_head(key: str, task: str, **overrides):
    """The head ``key`` (greedy, dola-low, dola-high, sled) with ``task``'s presets (``open``: generation)."""
    from decoding.presets import head_for_task

    preset = "generation" if task == "open" else task
    if key.startswith("dola-"):
        return head_for_task("dola", preset, dola_layers=key.removeprefix("dola-"), **overrides)
    return head_for_task(key, preset, **overrides)


def head_label(head) -> str:
    """``repr(head)`` before use, without DoLa's record of its last layer choice."""
    return repr(head).replace(", last_choice=None", "")


def sweep_points(task: str, num_layers: int) -> dict[str, dict]:
    """SLED options of each sweep point: one factor at a time around ``task``'s preset."""
    n = num_layers
    points: dict[str, dict] = {f"k={k}": {"evolution_scale": k} for k in SWEEP_SCALES[task]}
    points.update({f"alpha={a:g}": {"evolution_rate": a} for a in SWEEP_RATES})
    layer_sets = {
        f"0-{n // 2 - 1}": range(n // 2),
        f"{n // 2}-{n - 1}": range(n // 2, n),
        "even": range(0, n, 2),
    }
    points.update({f"layers={name}": {"layers": list(ids)} for name, ids in layer_sets.items() if len(ids)})
    return points


def score_task(task: str, model, tok, items, head, desc: str, args) -> dict:
    """Per-item scores of one head on an MC task, its summary line and its wall time."""
    from decoding.mc import evaluate_factor, evaluate_truthfulqa, truthfulqa_prompt, zero_shot_prompt
    from decoding.presets import task_defaults

    post = task_defaults(task).get("post_softmax", False) or (
        task == "truthfulqa-mc" and args.tqa_post_softmax
    )
    label = head_label(head)
    clock = Clock()
    if task == "truthfulqa-mc":
        build = truthfulqa_prompt if args.prompt == "six-shot" else zero_shot_prompt
        rows: list[dict] = []
        res = evaluate_truthfulqa(model, tok, items, head, post, prompt=build, per_item=rows, desc=desc)
        per_item = {m: [row[m] for row in rows] for m in METRICS[task]}
        extra = {"mc2_nan": res["mc2_nan"]}
    else:
        rows = []
        res = evaluate_factor(model, tok, items, head, post, per_item=rows, desc=desc)
        per_item, extra = {"accuracy": [float(row["correct"]) for row in rows]}, {}
    return {"head": label, "items": per_item, **clock.record(len(items)), **extra}


def run_mc_task(task: str, model, tok, items, args) -> dict:
    """Main heads on all items, then the SLED sweep on the first ``--sweep-limit`` items."""
    from decoding.bootstrap import paired_bootstrap
    from decoding.layers import model_info

    score_task(
        task, model, tok, items[:1], task_head("sled", task), "warm-up", args
    )  # one-off costs, untimed
    heads = {
        key: score_task(task, model, tok, items, task_head(key, task), f"{task} {key}", args)
        for key in args.heads
    }
    out = {"n": len(items), "metrics": list(METRICS[task]), "head_order": list(heads), "heads": heads}
    out["summary"] = summarise(heads, METRICS[task], args)
    if args.no_sweep:
        return out
    m = min(args.sweep_limit or len(items), len(items))
    greedy = heads["greedy"]["items"]
    points = {}
    for name, opts in sweep_points(task, model_info(model)[0]).items():
        res = score_task(task, model, tok, items[:m], task_head("sled", task, **opts), f"sweep {name}", args)
        res["options"] = opts
        res["summary"] = {
            metric: paired_bootstrap(
                {"greedy": greedy[metric][:m], name: res["items"][metric]},
                "greedy",
                args.n_boot,
                args.boot_seed,
            )[name]
            for metric in METRICS[task]
        }
        points[name] = res
    out["sweep"] = {
        "n": m,
        "preset": head_label(task_head("sled", task)),
        "order": list(points),
        "points": points,
    }
    return out


def summarise(heads: dict, metrics: tuple[str, ...], args) -> dict:
    """``{metric: paired_bootstrap over heads}`` (differences to greedy on the same resamples)."""
    from decoding.bootstrap import paired_bootstrap

    return {
        m: paired_bootstrap(
            {k: h["items"][m] for k, h in heads.items()}, "greedy", args.n_boot, args.boot_seed
        )
        for m in metrics
    }


def pick_items(items: list, args: argparse.Namespace) -> list:
    """The first ``--limit`` items, or a seeded random ``--sample`` of them in file order (all by default)."""
    if args.sample is None or args.sample >= len(items):
        return items[: args.limit]
    keep = sorted(random.Random(args.sample_seed).sample(range(len(items)), args.sample))
    return [items[i] for i in keep]


def open_prompts(tok, limit: int | None, chat: bool) -> tuple[list[str], list[str], bool]:
    """``(prompts as written, model inputs, chat template used)``."""
    lines = [s.strip() for s in (DATA / "open_prompts.txt").read_text(encoding="utf-8").splitlines()]
    prompts = [s for s in lines if s][:limit]
    use_chat = chat and getattr(tok, "chat_template", None) is not None
    if not use_chat:
        return prompts, prompts, False
    inputs = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return prompts, inputs, True


def run_open(model, tok, args) -> dict:
    """Generate with every head; rep-4 and distinct-2 per continuation, EOS/pad ids stripped."""
    from tqdm.auto import tqdm

    from decoding.generate import generate
    from decoding.repetition import distinct_n, repeated_ngram_rate

    prompts, inputs, chat = open_prompts(tok, args.limit, not args.no_chat_template)
    special = set(tok.all_special_ids)
    generate(model, tok, inputs[: args.gen_batch], task_head("sled", "open"), 2)  # one-off costs, untimed
    heads = {}
    for key in args.heads:
        head = task_head(key, "open")
        label = head_label(head)
        texts, ids, clock = [], [], Clock()
        for b in tqdm(range(0, len(inputs), args.gen_batch), desc=f"open {key}"):
            batch = inputs[b : b + args.gen_batch]
            res = generate(
                model, tok, batch, head, args.max_new_tokens, repetition_penalty=args.repetition_penalty
            )
            texts += res.texts
            ids += [[t for t in row if t not in special] for row in res.token_ids]
        heads[key] = {
            "head": label,
            "texts": texts,
            "lengths": [len(row) for row in ids],
            "raw": {
                "rep4": [repeated_ngram_rate(r, 4) for r in ids],
                "distinct2": [distinct_n(r, 2) for r in ids],
            },
            **clock.record(len(inputs)),
        }
    # a continuation with fewer than 4 tokens has no rep-4: drop that prompt for every head (paired)
    keep = [
        i
        for i in range(len(inputs))
        if all(h["raw"][m][i] is not None for h in heads.values() for m in METRICS["open"])
    ]
    for h in heads.values():
        h["items"] = {m: [h["raw"][m][i] for i in keep] for m in METRICS["open"]}
    if not keep:
        raise UserError("every continuation is shorter than 4 tokens; raise --max-new-tokens")
    out = {"n": len(keep), "metrics": list(METRICS["open"]), "head_order": list(heads)}
    out.update(n_prompts=len(inputs), dropped_short=len(inputs) - len(keep))
    out.update(prompts=prompts, chat_template=chat, max_new_tokens=args.max_new_tokens)
    out.update(repetition_penalty=args.repetition_penalty, batch=args.gen_batch, heads=heads)
    out["summary"] = summarise(heads, METRICS["open"], args)
    return out


def provenance(model_name: str, model_path: Path, data_files: list[Path]) -> dict:
    """Versions, CPU path, threads, weights' sha256s and what the weights are, data sha256s, git commit."""
    from decoding.gguf import read_source
    from decoding.provenance import environment, file_sha256

    gguf = read_source(model_path)
    weights = model_path / "model.safetensors"
    if gguf is not None:
        quant = "4-bit (Q4_1)" if "Q4_1" in gguf.get("gguf_file", "") else "quantised"
        note = (
            f"weights: the {quant} values of {gguf.get('gguf_file')} expanded to float32 (float size, the "
            "precision of the quantised file; not the original bf16 model)"
        )
    else:
        note = "weights: the checkpoint as saved (not a GGUF conversion)"
    root = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True)
    return {
        "environment": environment(),
        "model": model_name,
        "model_path": str(model_path),
        "gguf_sha256": gguf.get("sha256") if gguf else None,
        "gguf_file": gguf.get("gguf_file") if gguf else None,
        "safetensors_sha256": file_sha256(weights) if weights.exists() else None,
        "weights_note": note,
        "data_sha256": {p.name: file_sha256(p) for p in data_files},
        "git_commit": git.stdout.strip() or None,
        "git_dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
        "command": "python " + shlex.join(sys.argv),
    }


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    import torch
    from heads_report import render_markdown, render_png

    from decoding.mc_datasets import load_factor, load_truthfulqa
    from decoding.models import load_causal_lm, load_tokenizer, resolve_model_path
    from decoding.run_folder import atomic_write_dir, atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    model = load_causal_lm(args.model, dtype="float32").eval()
    tok = load_tokenizer(args.model)
    files = {
        "truthfulqa-mc": DATA / "factual_mc.csv",
        "factor": DATA / "factual_factor.csv",
        "open": DATA / "open_prompts.txt",
    }
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "provenance": provenance(
            args.model, Path(resolve_model_path(args.model)), [files[t] for t in args.tasks]
        ),
        "tasks": {},
    }
    for task in args.tasks:
        if task == "open":
            result["tasks"][task] = run_open(model, tok, args)
            continue
        items = load_truthfulqa(files[task]) if task == "truthfulqa-mc" else load_factor(files[task])
        result["tasks"][task] = run_mc_task(task, model, tok, pick_items(items, args), args)

    def fill(folder: Path) -> None:
        atomic_write_json(folder / "results.json", result)
        atomic_write_text(folder / "results.md", render_markdown(result))
        render_png(result, folder / "heads.png")

    atomic_write_dir(args.out, fill)
    print(render_markdown(result))
    print(f"wrote {args.out}/results.json, results.md, heads.png")


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv, prog="heads_factuality")


if __name__ == "__main__":
    main()
