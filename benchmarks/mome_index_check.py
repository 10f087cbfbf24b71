"""Cost of the index's staleness check (a checksum of the keys' bits) against the search it guards.

Run (~1 minute on 2 CPU cores, ~3 GB at E = 1M)::

    OMP_NUM_THREADS=1 python benchmarks/mome_index_check.py

For each key table: :func:`memexp.mome.index.keys_checksum` (run before every search given the live keys),
the sha256 fingerprint (written with a saved index), and one search of ``--queries`` queries for k = 8 by
FAISS Flat and IVF (``nlist`` 1024, ``nprobe`` 32; trained once) without the check. Medians of
``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memexp.mome.index import IndexConfig, KeyIndex, keys_checksum, keys_fingerprint


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["16384x32", "1000000x128"], help="E x d_k")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; {args.queries} queries, k = 8")
    print("| keys E x d | MB | checksum ms | sha256 ms | Flat search ms | IVF search ms |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        e, d = (int(x) for x in size.split("x"))
        g = torch.Generator().manual_seed(0)
        keys = torch.randn(e, d, generator=g) * d**-0.5  # (E, d)
        q = torch.randn(args.queries, d, generator=g)
        check = median_ms(lambda: keys_checksum(keys), args.repeats)
        sha = median_ms(lambda: keys_fingerprint(keys), max(1, args.repeats // 2))
        cells = []
        for cfg in (IndexConfig(kind="flat"), IndexConfig(kind="ivf", nlist=1024, nprobe=32)):
            index = KeyIndex(cfg).build(keys)
            cells.append(median_ms(lambda index=index: index.search(q, 8), args.repeats))
        times = " | ".join(f"{t:.1f}" for t in (check, sha, *cells))
        print(f"| {e:,} x {d} | {keys.nbytes / 1e6:.0f} | {times} |")


if __name__ == "__main__":
    main()
