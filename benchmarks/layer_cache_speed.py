"""Frozen-layer cache: a MoME training step with and without the cached frozen blocks, side by side.

Run (SmolLM2-135M, 30 blocks; a few minutes on 2 CPU cores)::

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/layer_cache_speed.py --top 2 6 --facts 32 --steps 5

For each expert placement (the top ``n`` blocks' ``mlp.down_proj``; the router reads the input of the
lowest of them) one batch of ``--facts`` facts is one epoch. Three variants of the phase-1 step
(forward + backward of router and experts; the optimiser step is the same for all and left out) run
in turn, so that machine noise hits all alike, and the medians of ``--steps`` rounds are printed:

- ``before``: every block, logits at every position (the step before this change);
- ``uncached``: every block, logits at answer positions only (``cache_frozen_layers: false``);
- ``cached``: the top blocks from the cached input, logits at answer positions only
  (``cache_frozen_layers: true``); the one-off cache build is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from decoding.provenance import environment
from memexp.answer_logits import answer_positions, summed_answer_nll
from memexp.data import FactsDataModule
from memexp.layer_cache import LayerCache
from memexp.mome import MoMEConfig
from memexp.mome.router import masked_mean
from memexp.mome.tuning import MoMETuning

MODEL = "smollm2:135m-instruct"


def full_logits_nll(module: MoMETuning, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The step before the change: logits ``(B, T, V)`` at every position, answer NLL summed per row."""
    logits = module.model(
        batch["input_ids"], attention_mask=batch["attention_mask"], question_mask=batch["prompt_mask"]
    ).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    token = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets.clamp_min(0), reduction="none"
    )
    return (token * (targets != -100)).sum(1)


def step(module: MoMETuning, batch: dict[str, torch.Tensor], variant: str) -> float:
    """One phase-1 forward + backward; returns its wall time in seconds."""
    module.model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    keep = answer_positions(batch["labels"])
    if variant == "before":
        nll = full_logits_nll(module, batch)
    elif variant == "uncached":
        logits = module.model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            question_mask=batch["prompt_mask"],
            logits_to_keep=keep,
        ).logits
        nll = summed_answer_nll(logits, batch["labels"], keep)
    else:
        nll = summed_answer_nll(module._cached_forward(batch, {}, keep), batch["labels"], keep)
    loss = nll.sum() / keep.sum() + module.model.last_routing.aux_loss
    loss.backward()
    return time.perf_counter() - start


def measure(top: int, batch: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    layers = 30
    sites = [f"model.layers.{i}.mlp.down_proj" for i in range(layers - top, layers)]
    config = MoMEConfig(num_experts=4096, k=8, rank=1, sites=sites, key_dim=64)
    module = MoMETuning(backbone=MODEL, mome=config, optimizer="adamw", cache_frozen_layers=True)
    module.model.train()
    mome = module.model
    start = time.perf_counter()
    with torch.no_grad(), mome.experts_off():
        module.layer_cache = LayerCache.build(
            mome.backbone,
            [batch],
            mome.first_site_layer,
            pool=lambda hidden, b: masked_mean(hidden, b["prompt_mask"]),
        )
    build = time.perf_counter() - start
    variants = ("before", "uncached", "cached")
    for variant in variants:  # warm-up
        step(module, batch, variant)
    times = {v: [] for v in variants}
    for _ in range(steps):
        for variant in variants:
            times[variant].append(step(module, batch, variant))
    medians = {v: statistics.median(t) for v, t in times.items()}
    return medians | {"build": build, "cut": mome.first_site_layer}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, nargs="+", default=[2, 6], help="expert blocks at the top")
    parser.add_argument("--facts", type=int, default=32, help="facts per batch (= per epoch)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds per variant")
    args = parser.parse_args()
    data = FactsDataModule(
        tokenizer=MODEL,
        num_random_facts=args.facts,
        batch_size=args.facts,
        answer_min_len=8,
        answer_max_len=16,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    keep = answer_positions(batch["labels"])
    print(
        f"{MODEL}, {args.facts} facts, {batch['input_ids'].shape[1]} tokens (padded), "
        f"{int(keep.sum())} answer positions, {torch.get_num_threads()} threads; {environment()}"
    )
    print("| experts | cut | before s | uncached s | cached s | before/cached | uncached/cached | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for top in args.top:
        m = measure(top, batch, args.steps)
        print(
            f"| top {top} | {m['cut']} | {m['before']:.3f} | {m['uncached']:.3f} | {m['cached']:.3f} | "
            f"{m['before'] / m['cached']:.2f}x | {m['uncached'] / m['cached']:.2f}x | {m['build']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
