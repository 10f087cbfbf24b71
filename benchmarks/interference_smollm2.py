"""Interference of fact memorisation on SmolLM2: base measurements, then a briefly trained peft LoRA.

Stages (each writes one JSON into ``--out``, atomically; ``all`` runs them in order)::

    base     memexp.interference.measure(base model)                       -> base.json
    lora     train a peft LoRA on random facts, then measure(adapted model) -> lora.json
    compare  compare(base, lora): ratios with paired bootstrap intervals    -> compare.json

``base`` and ``lora`` are independent (two processes may run them side by side); ``compare`` reads
both. The LoRA stage trains with plain AdamW on the fact tokenisation of ``memexp.data`` (template
``Q: {question}\\nA:``, loss on the answer and EOS only), batches drawn with a seeded RNG, and also
reports the teacher-forced exact recall of the trained facts (every answer token and EOS the argmax).

    OMP_NUM_THREADS=1 python benchmarks/interference_smollm2.py --stage all --out runs/interference
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("base", "lora", "compare", "all"), default="all")
    p.add_argument("--out", type=Path, default=Path("runs/interference_smollm2"))
    p.add_argument("--model", default="smollm2:135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-len", type=int, default=128)
    p.add_argument("--max-chunks", type=int, default=None, help="real-text chunks (all when omitted)")
    p.add_argument("--mc-sample", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8, help="rows per NLL forward / generation batch")
    p.add_argument("--facts", type=int, default=100)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=10_000)
    return p.parse_args(argv)


def provenance(args: argparse.Namespace) -> dict:
    """Versions, threads, the GGUF's sha256 and the command line."""
    from decoding.gguf import read_source
    from decoding.models import resolve_model_path
    from decoding.provenance import environment

    gguf = read_source(Path(resolve_model_path(args.model))) or {}
    return {
        "environment": environment(),
        "model": args.model,
        "gguf_file": gguf.get("gguf_file"),
        "gguf_sha256": gguf.get("sha256"),
        "command": "python " + shlex.join(sys.argv),
    }


def measure_kwargs(args: argparse.Namespace) -> dict:
    """The settings every measurement of this run shares."""
    return {
        "chunk_len": args.chunk_len,
        "max_chunks": args.max_chunks,
        "mc_sample": args.mc_sample,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
    }


def fact_recall(model, tok, examples: list, pad_id: int) -> dict[str, float]:
    """Teacher-forced exact recall (every answer token and EOS the argmax) and mean answer NLL."""
    import torch
    import torch.nn.functional as F

    from memexp.data import IGNORE_INDEX, collate_examples

    batch = collate_examples(examples, pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]  # (B, T-1, V), (B, T-1)
    on = labels != IGNORE_INDEX
    hit = (logits.argmax(-1) == labels) | ~on  # (B, T-1)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return {
        "exact_recall": hit.all(-1).float().mean().item(),
        "answer_nll": (nll.sum(-1) / on.sum(-1)).mean().item(),
    }


def train_lora(model, tok, args: argparse.Namespace) -> tuple:
    """Wrap ``model`` in a LoRA adapter and train it on ``--facts`` random facts; returns (model, log)."""
    import torch

    from memexp.data import collate_examples, tokenize_fact
    from memexp.fact_tuning import apply_lora
    from memexp.facts import random_facts

    torch.manual_seed(args.seed)
    examples = [tokenize_fact(f, tok, "Q: {question}\nA:") for f in random_facts(args.facts, seed=args.seed)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = apply_lora(model, args.lora_r, args.lora_alpha, 0.0, None)
    before = fact_recall(model.eval(), tok, examples, pad)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng, losses, t0 = random.Random(args.seed), [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        batch = collate_examples(rng.sample(examples, args.train_batch), pad)
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    log = {
        "facts": args.facts,
        "steps": args.steps,
        "train_batch": args.train_batch,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lr": args.lr,
        "trainable_params": sum(p.numel() for p in params),
        "train_seconds": seconds,
        "losses": losses,
        "facts_before": before,
        "facts_after": fact_recall(model.eval(), tok, examples, pad),
    }
    return model.eval(), log


def main(argv: list[str] | None = None) -> None:
    """Run the requested stages."""
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from decoding.models import load_causal_lm, load_tokenizer
    from decoding.run_folder import atomic_write_json
    from memexp.interference import Measurement, compare, measure

    args.out.mkdir(parents=True, exist_ok=True)
    stages = ("base", "lora", "compare") if args.stage == "all" else (args.stage,)
    if "base" in stages or "lora" in stages:
        tok = load_tokenizer(args.model)
    if "base" in stages:
        model = load_causal_lm(args.model, dtype="float32").eval()
        m = measure(model, tok, **measure_kwargs(args))
        atomic_write_json(args.out / "base.json", {**m.to_dict(), "provenance": provenance(args)})
        print("base:", m.summary(), m.seconds, flush=True)
    if "lora" in stages:
        model, log = train_lora(load_causal_lm(args.model, dtype="float32"), tok, args)
        print("training:", {k: v for k, v in log.items() if k != "losses"}, flush=True)
        m = measure(model, tok, **measure_kwargs(args))
        atomic_write_json(
            args.out / "lora.json", {**m.to_dict(), "training": log, "provenance": provenance(args)}
        )
        print("lora:", m.summary(), m.seconds, flush=True)
    if "compare" in stages:
        read = [json.loads((args.out / f"{k}.json").read_text()) for k in ("base", "lora")]
        base, lora = (
            Measurement.from_dict({k: v for k, v in r.items() if k in Measurement.__dataclass_fields__})
            for r in read
        )
        result = compare(base, lora, n_boot=args.n_boot, seed=args.seed)
        atomic_write_json(args.out / "compare.json", {"compare": result, "provenance": provenance(args)})
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
