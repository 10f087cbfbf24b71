"""DDP with 2 CPU processes (gloo): sparse expert and key gradients are all-reduced like dense ones.

Oracle: DDP averages the ranks' gradients, so with equal halves of a batch and a per-example mean loss,
every rank must end with exactly the single-process gradient of the whole batch. The sparse gradients go
through :mod:`memexp.mome.ddp_sparse` (gloo's own sparse all-reduce corrupts the heap now and then).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.ddp_sparse import allreduce_sparse, register_sparse_allreduce_hook, sparse_allreduce_hook


def tiny_mome() -> MoMEModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = MoMEModel(
        LlamaForCausalLM(cfg),
        MoMEConfig(
            num_experts=40,
            k=3,
            rank=2,
            key_dim=8,
            balance="none",
            sites=["model.layers.1.mlp.down_proj"],
            query_layer=1,
        ),
    )
    for site in model.sites.values():
        torch.nn.init.normal_(site.B.weight, std=0.3)
    return model


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (4, 7), generator=g), torch.randn(4, 7, 64, generator=g)


def per_example_loss(model, ids, proj):
    logits = model(ids, question_mask=torch.ones_like(ids, dtype=torch.bool)).logits  # (B, T, V)
    return (logits * proj).sum(dim=(1, 2)).mean()


def grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[name.removeprefix("module.")] = p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(tiny_mome())
        register_sparse_allreduce_hook(model)
        ids, proj = inputs()
        half = slice(2 * rank, 2 * rank + 2)
        per_example_loss(model, ids[half], proj[half]).backward()
        torch.save(grads(model), os.path.join(out_dir, f"grads{rank}.pt"))
        rows = torch.tensor([[1, 3]]) if rank else torch.zeros(1, 0, dtype=torch.long)  # rank 0: no row
        part = torch.sparse_coo_tensor(rows, torch.ones(rows.shape[1], 2), (5, 2))
        torch.save(allreduce_sparse(part).to_dense(), os.path.join(out_dir, f"empty{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_synchronises_sparse_expert_gradients(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = tiny_mome()
    ids, proj = inputs()
    per_example_loss(model, ids, proj).backward()
    want = grads(model)
    assert model.sites["model.layers.1.mlp.down_proj"].A.weight.grad.is_sparse
    assert {"router.keys.weight", "backbone.model.layers.1.mlp.down_proj.A.weight"} <= set(want)
    for rank in range(2):
        got = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
        want_avg = torch.zeros(5, 2).index_fill_(0, torch.tensor([1, 3]), 0.5)  # rank 1's rows, halved
        torch.testing.assert_close(torch.load(tmp_path / f"empty{rank}.pt"), want_avg, rtol=0, atol=0)


class SaveTables(L.Callback):
    """Each rank checks the sparse-gradient hook is in place and writes its expert tables and keys."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, module) -> None:
        hooks = [hook for hook, _ in trainer.strategy.model._comm_hooks]
        assert hooks == [sparse_allreduce_hook], f"sparse gradients must not use gloo's all-reduce: {hooks}"
        state = {
            n: p.detach().clone()
            for n, p in module.model.named_parameters()
            if p.requires_grad or n == "router.keys.weight"
        }
        torch.save(state, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


def test_cli_ddp_two_cpu_processes_keep_ranks_identical(tmp_path):
    """``memexp fit`` with ``ddp_find_unused_parameters_true`` on 2 CPU processes through both phases."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{root}{os.pathsep}{Path(__file__).parent}"}
    cmd = [
        sys.executable,
        "-m",
        "memexp",
        "fit",
        "--config",
        str(root / "configs" / "memexp" / "mome_demo.yaml"),
        "--model.init_args.backbone=tiny:llama?layers=4",
        "--model.init_args.mome.num_experts=64",
        "--data.init_args.num_random_facts=16",
        "--data.init_args.num_heldout=2",
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=3",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.callbacks+=test_mome_ddp.SaveTables",
        f"--trainer.callbacks.out_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert any(n.endswith("B.weight") and t.abs().sum() > 0 for n, t in rank0.items())  # experts trained
    for name in rank0:  # different data shards, same parameters: the sparse gradients were all-reduced
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=1e-6, msg=name)
    with open(tmp_path / "run" / "fact_evals.csv") as fh:  # gathered from both ranks, each fact once
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["epoch", "step", "fact_id", "nll"]
    for epoch in {r["epoch"] for r in rows}:
        ids = [r["fact_id"] for r in rows if r["epoch"] == epoch]
        assert len(ids) == len(set(ids)) == 16, epoch
