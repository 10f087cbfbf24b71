"""Expert-layer overhead: MoME training step vs the frozen-backbone step, side by side in one run.

Run (8-layer, hidden-512 tiny Llama; a few minutes on 2 CPU cores, ~3.5 GB peak at r=4)::

    python benchmarks/mome_overhead.py --experts 65536 --k 32 --ranks 1 2 4
    python benchmarks/mome_overhead.py --million        # E = 1,000,000 forward+backward, peak RSS

Three timings per rank, interleaved: the frozen backbone's inference forward; the frozen backbone's
forward + backward from the loss down to the router's query layer (that layer's input is made to require
grad, so the backward covers the same blocks a MoME step must traverse) -- the "frozen-backbone step";
and the MoME training step.
The MoME step adds routing (exact search over E keys + re-scoring), the gathered experts at the sites,
the sparse backward and a sparse optimizer step (SGD on the sparse rows; SparseAdam's dense moment
buffers would triple the table memory). Times are medians of ``--steps`` after ``--warmup`` steps,
alternating the two variants so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import tempfile
import time

import torch

from decoding.models import load_causal_lm
from decoding.tiny import build_tiny_lm
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.sites import find_decoder_layers


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def frozen_step(model, layers, query_layer, ids, labels) -> None:
    """Forward + backward of the frozen backbone from ``query_layer`` on (no experts)."""

    def needs_grad(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_(True)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = layers[query_layer].register_forward_pre_hook(needs_grad, with_kwargs=True)
    try:
        with model.experts_off():
            model(ids, labels=labels).loss.backward()
    finally:
        handle.remove()


@torch.no_grad()
def frozen_forward(model, ids) -> None:
    """Inference forward of the frozen backbone (experts off): the floor of any training step."""
    with model.experts_off():
        model(ids)


def mome_step(model, opt, ids, qmask, labels) -> None:
    model(ids, question_mask=qmask, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench(args, model_dir: str, rank: int, num_experts: int) -> tuple[float, float]:
    torch.manual_seed(0)
    backbone = load_causal_lm(model_dir)
    cfg = MoMEConfig(
        num_experts=num_experts,
        k=args.k,
        rank=rank,
        sites=args.sites,
        query_layer=args.query_layer,
        dtype=args.dtype,
    )
    model = MoMEModel(backbone, cfg).train()
    layers = find_decoder_layers(backbone)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 380, (args.batch, args.seq), generator=g)
    qmask = torch.zeros_like(ids, dtype=torch.bool)
    qmask[:, : args.seq // 2] = True
    labels = ids.masked_fill(qmask, -100)
    t_fwd, t_frozen, t_mome = [], [], []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        frozen_forward(model, ids)
        t1 = time.perf_counter()
        frozen_step(model, layers, model.query_layer, ids, labels)
        t2 = time.perf_counter()
        mome_step(model, opt, ids, qmask, labels)
        t3 = time.perf_counter()
        if step >= args.warmup:
            t_fwd.append(t1 - t0)
            t_frozen.append(t2 - t1)
            t_mome.append(t3 - t2)
    del model, backbone, opt
    gc.collect()
    return statistics.median(t_fwd), statistics.median(t_frozen), statistics.median(t_mome)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experts", type=int, default=65_536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--sites", nargs="+", default=["model.layers.6.mlp.down_proj", "model.layers.7.mlp.down_proj"]
    )
    parser.add_argument("--query-layer", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--million",
        action="store_true",
        help="one forward+backward at E=1,000,000 (bf16 tables, one site, r=1) and peak RSS",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_lm(f"{tmp}/m", arch="llama", hidden=512, layers=8, heads=8, seed=0))
        print(
            f"torch threads {torch.get_num_threads()}; model: tiny llama hidden 512, 8 layers; "
            f"batch {args.batch} x {args.seq} tokens; sites {args.sites}; query layer {args.query_layer}"
        )
        if args.million:
            args.sites, args.query_layer, args.dtype, args.steps, args.warmup = (
                ["model.layers.7.mlp.down_proj"],
                7,
                "bfloat16",
                2,
                1,
            )
            base = peak_rss_gib()
            _, frozen, mome = bench(args, model_dir, rank=1, num_experts=1_000_000)
            print(
                f"E=1,000,000 r=1 k={args.k} bf16 tables, 1 site: frozen step {frozen * 1e3:.0f} ms, "
                f"MoME step {mome * 1e3:.0f} ms (x{mome / frozen:.2f}); peak RSS {peak_rss_gib():.2f} GiB "
                f"(before the bank: {base:.2f} GiB)"
            )
            return
        print(
            "| E | k | r | frozen fwd ms | frozen fwd+bwd ms | MoME step ms | MoME / fwd+bwd | MoME / fwd |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for rank in args.ranks:
            fwd, frozen, mome = bench(args, model_dir, rank, args.experts)
            print(
                f"| {args.experts} | {args.k} | {rank} | {fwd * 1e3:.1f} | {frozen * 1e3:.1f} | "
                f"{mome * 1e3:.1f} | {mome / frozen:.2f} | {mome / fwd:.2f} |",
                flush=True,
            )
        print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
