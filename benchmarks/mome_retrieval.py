"""Retrieval for MoME: top-32 of 1,000,000 keys for 256 queries, latency and recall@32 per index kind.

Run (about 5 minutes on 2 CPU cores, ~2 GB of RAM)::

    python benchmarks/mome_retrieval.py --num-keys 1000000 --queries 256 --dim 128

Two key distributions: ``random`` (what a freshly initialised / still training key table looks like) and
``clustered`` (4,096 tight clusters, what frozen keys may look like after phase 1). Recall@32 is measured
against exact torch search on the same keys. Latency is the median of ``--repeats`` searches of the whole
query batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memexp.mome.index import IndexConfig, KeyIndex, exact_topk, recall_at_k


def make_keys(kind: str, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        keys = torch.randn(n, d, generator=g)
        queries = torch.randn(256, d, generator=g)
    else:
        centres = torch.randn(4096, d, generator=g)
        keys = centres[torch.randint(0, 4096, (n,), generator=g)] + 0.05 * torch.randn(n, d, generator=g)
        queries = centres[torch.randint(0, 4096, (256,), generator=g)] + 0.05 * torch.randn(
            256, d, generator=g
        )
    return torch.nn.functional.normalize(keys, dim=1), torch.nn.functional.normalize(queries, dim=1)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-keys", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=1024)
    args = parser.parse_args()
    print(
        f"torch threads {torch.get_num_threads()}; {args.num_keys} keys x d={args.dim}, "
        f"{args.queries} queries, k={args.k}"
    )
    print(f"| keys | search | build s | latency ms (batch of {args.queries}) | recall@{args.k} |")
    print("|---|---|---|---|---|")
    for dist in ("random", "clustered"):
        keys, queries = make_keys(dist, args.num_keys, args.dim)
        queries = queries[: args.queries]
        lat, (_, exact) = timed(lambda: exact_topk(queries, keys, args.k), args.repeats)
        print(f"| {dist} | exact torch (mm + topk) | 0 | {lat * 1e3:.1f} | 1.000 |", flush=True)
        configs = [("flat", IndexConfig(kind="flat"), [None])]
        configs.append(("ivf", IndexConfig(kind="ivf", nlist=args.nlist), [8, 32, 128]))
        configs.append(("hnsw", IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=40), [64, 256]))
        for name, cfg, knobs in configs:
            t0 = time.perf_counter()
            index = KeyIndex(cfg).build(keys)
            build = time.perf_counter() - t0
            for knob in knobs:
                label = "FAISS Flat IP"
                if name == "ivf":
                    index._faiss_index.nprobe = knob
                    label = f"FAISS IVF{args.nlist},Flat nprobe {knob}"
                elif name == "hnsw":
                    index._faiss_index.hnsw.efSearch = knob
                    label = f"FAISS HNSW16 efSearch {knob}"
                lat, (_, ids) = timed(lambda: index.search(queries, args.k), args.repeats)
                print(
                    f"| {dist} | {label} | {build:.1f} | {lat * 1e3:.1f} | {recall_at_k(ids, exact):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
