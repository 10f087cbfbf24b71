"""L2P training/evaluation throughput: cached frozen queries vs. a separate query ViT at every step.

The straightforward implementation (official JAX code) keeps a second, prompt-free copy of the frozen ViT
and runs it on every batch to get q(x), then runs the prompted ViT. With deterministic inputs (no
augmentation) q(x) never changes, so ours computes it once per sample (``QueryCache``) and reuses it in
every epoch and every evaluation. Both variants run the same steps on the same data in one process,
one after the other, repeated ``--repeats`` times (best time kept); selections and losses are checked equal.

    OMP_NUM_THREADS=1 python benchmarks/prompt_pool_throughput.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from prompt_pool.data_config import ImageConfig, LoaderConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.l2p import L2P
from prompt_pool.pool import PoolConfig

CONFIGS = {
    "digits ViT (8x8, p2, d64, depth 2)": dict(
        img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=2, num_heads=4
    ),
    "ViT-S-like (32x32, p4, d192, depth 6)": dict(
        img_size=32, patch_size=4, in_chans=1, embed_dim=192, depth=6, num_heads=3
    ),
}


def build(kw: dict, cached: bool) -> L2P:
    m = L2P(
        num_classes=10,
        backbone_kwargs=kw,
        pool=PoolConfig(pool_size=10, prompt_length=5, top_n=2, prompt_init="uniform"),
        head_type="cls",
        cache_queries=cached,
        batch_size=16,
        seed=0,
    )
    if not cached:  # the straightforward way: a second frozen ViT computes q(x) at every step
        query_vit = copy.deepcopy(m.backbone)
        m.query = lambda x, uid=None: query_vit.query(x)  # type: ignore[method-assign]
    return m


def run_protocol(m: L2P, dm: TaskSequenceDataModule, epochs: int) -> tuple[float, int, float, int, list]:
    """Train task 0 for ``epochs`` then evaluate every task once per epoch; returns times, counts, trace."""
    opt = torch.optim.Adam(m.trainable_parameters(), lr=m.lr_effective)
    m.begin_task(0, dm.tasks[0].classes)
    trace, n_train, n_eval, t_train, t_eval = [], 0, 0, 0.0, 0.0
    g = torch.Generator().manual_seed(0)
    data = dm.train_dataset(0)
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        t0 = time.perf_counter()
        m.train()
        for i in range(0, len(perm), 16):
            x, y, uid = (torch.stack(v) for v in zip(*(data[j] for j in perm[i : i + 16].tolist())))
            logits, aux = m.logits(x, uid)
            loss = F.cross_entropy(m.mask_logits(logits, m.task_classes), y) + m.extra_loss(x, y, logits, aux)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), 1.0)
            opt.step()
            trace.append((aux["ids"].clone(), loss.detach().clone()))
            n_train += len(y)
        t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        m.eval()
        with torch.no_grad():
            for loader in dm.test_loaders():
                for x, y, uid in loader:
                    m.logits(x, uid)
                    n_eval += len(y)
        t_eval += time.perf_counter() - t0
    return t_train, n_train, t_eval, n_eval, trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| backbone | phase | straightforward (img/s) | cached query (img/s) | speed-up |")
    print("|---|---|---|---|---|")
    for name, kw in CONFIGS.items():
        dm = TaskSequenceDataModule(
            "digits", loader=LoaderConfig(batch_size=16), images=ImageConfig(image_size=kw["img_size"])
        )
        best = {}
        for _ in range(a.repeats):
            for cached in (False, True):
                tt, nt, te, ne, trace = run_protocol(build(kw, cached), dm, a.epochs)
                b = best.setdefault(cached, [tt, te, trace])
                b[0], b[1] = min(b[0], tt), min(b[1], te)
        plain, fast = best[False][2], best[True][2]
        same_ids = all(torch.equal(p_[0], f_[0]) for p_, f_ in zip(plain, fast))
        max_dloss = max(float((p_[1] - f_[1]).abs()) for p_, f_ in zip(plain, fast))
        for phase, i, n in (("train", 0, nt), ("eval", 1, ne), ("train+eval", None, nt + ne)):
            t_plain = best[False][0] + best[False][1] if i is None else best[False][i]
            t_fast = best[True][0] + best[True][1] if i is None else best[True][i]
            print(f"| {name} | {phase} | {n / t_plain:.0f} | {n / t_fast:.0f} | {t_plain / t_fast:.2f}x |")
        print(
            f"<!-- {name}: identical selections in all {len(plain)} steps: {same_ids}; "
            f"max |loss difference| {max_dloss:.2e} -->"
        )


if __name__ == "__main__":
    main()
