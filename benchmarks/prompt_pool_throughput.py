"""L2P training/evaluation throughput: ours vs. the straightforward two-pass implementation.

Straightforward (official JAX code): a second, prompt-free copy of the frozen ViT runs on every batch to
get q(x) (a full forward), then the prompted ViT runs in full and the head pools its output. Ours:

- q(x) is computed once per sample (``QueryCache``; inputs are deterministic without augmentation) and
  reused in every epoch and every evaluation;
- both passes run their last block for the rows the head reads only (``prompt_pool.partial_block``: the
  [CLS] row for the query and the 'cls' head, the prompt rows for the 'prompt' head);
- a frozen backbone is not switched between train and eval mode on every query.

Both variants run the same steps on the same data in one process, interleaved, ``--repeats`` times (best
time kept); selections and losses are compared. ``--profile`` adds where a training step's time goes.

    OMP_NUM_THREADS=1 python benchmarks/prompt_pool_throughput.py [--epochs 3] [--repeats 2] [--profile]
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


class TwoPassL2P(L2P):
    """The straightforward implementation: a second frozen ViT for q(x) at every step, full passes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cache_queries=False, **kwargs)
        self.query_vit = copy.deepcopy(self.backbone.vit)

    def query(self, x: torch.Tensor, uid: torch.Tensor | None = None) -> torch.Tensor:
        v = self.query_vit
        with torch.no_grad():
            return v.norm(v.blocks(v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))))[:, 0]

    def forward_features(self, x, uid=None, query=None, all_layers=False):
        q = self.query(x, uid)  # (B, D)
        sel = self.pool(q)
        h = self.backbone.encode(x, sel.prompts)[0]  # (B, N*Lp+1+L, D), every row of every block
        feat = self.backbone.pool(h, self.pool.num_prompt_tokens, self.head_type)
        return [feat], {"pull": sel.pull, "ids": sel.ids, "query": q}


def build(kw: dict, cached: bool) -> L2P:
    cls = L2P if cached else TwoPassL2P
    m = cls(
        num_classes=10,
        backbone_kwargs=kw,
        pool=PoolConfig(pool_size=10, prompt_length=5, top_n=2, prompt_init="uniform"),
        head_type="cls",
        batch_size=16,
        seed=0,
    )
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


PHASES = ["batch", "query", "select", "prompted forward", "loss", "backward", "optimiser"]


def print_profile(name: str, splits: dict[bool, dict[str, float]], steps: int, epochs: int) -> None:
    """Markdown table: ms per training step by phase and its share, straightforward vs ours."""
    print(f"\n{name}: training-step time by phase, {epochs} epochs (ms per step, share of the step)")
    print("| phase | straightforward | ours |\n|---|---|---|")
    tot = {c: sum(v.values()) for c, v in splits.items()}
    for ph in PHASES:
        cells = [f"{splits[c][ph] / steps * 1e3:.2f} ({splits[c][ph] / tot[c]:.0%})" for c in (False, True)]
        print(f"| {ph} | {cells[0]} | {cells[1]} |")
    print(f"| total | {tot[False] / steps * 1e3:.2f} | {tot[True] / steps * 1e3:.2f} |\n")


def profile_steps(m: L2P, dm: TaskSequenceDataModule, epochs: int) -> dict[str, float]:
    """Seconds per phase of the training steps of ``epochs`` epochs of task 0 (the same steps as above)."""
    opt = torch.optim.Adam(m.trainable_parameters(), lr=m.lr_effective)
    m.begin_task(0, dm.tasks[0].classes)
    m.train()
    split = dict.fromkeys(PHASES, 0.0)
    g = torch.Generator().manual_seed(0)
    data = dm.train_dataset(0)

    def tick(phase: str, t0: float) -> float:
        t1 = time.perf_counter()
        split[phase] += t1 - t0
        return t1

    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(perm), 16):
            t = time.perf_counter()
            x, y, uid = (torch.stack(v) for v in zip(*(data[j] for j in perm[i : i + 16].tolist())))
            t = tick("batch", t)
            q = m.query(x, uid)
            t = tick("query", t)
            sel = m.pool(q)
            t = tick("select", t)
            if isinstance(m, TwoPassL2P):
                h = m.backbone.encode(x, sel.prompts)[0]
                feat = m.backbone.pool(h, m.pool.num_prompt_tokens, m.head_type)
            else:
                feat = m.backbone.pooled_features(x, sel.prompts, m.head_type)[-1]
            logits = m.head(feat)
            t = tick("prompted forward", t)
            loss = F.cross_entropy(m.mask_logits(logits, m.task_classes), y) - m.pull_coef * sel.pull
            t = tick("loss", t)
            opt.zero_grad()
            loss.backward()
            t = tick("backward", t)
            torch.nn.utils.clip_grad_norm_(m.trainable_parameters(), 1.0)
            opt.step()
            tick("optimiser", t)
    return split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also print where a training step's time goes")
    a = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| backbone | phase | straightforward (img/s) | ours (img/s) | speed-up |")
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
        if a.profile:
            splits = {c: profile_steps(build(kw, c), dm, a.epochs) for c in (False, True)}
            print_profile(name, splits, len(plain), a.epochs)


if __name__ == "__main__":
    main()
