"""A bank of 1,000,000 experts on the tiny backbone: forward, backward and one sparse step touch only the
selected rows, in bounded memory (CPU, ``slow``); the CUDA path with bf16 tables (``gpu``, skipped
without CUDA): exact torch search on the GPU, and FAISS-GPU when it is installed."""

from __future__ import annotations

import pytest
import torch

from decoding.models import load_causal_lm
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.index import IndexConfig, KeyIndex, exact_topk, faiss_has_gpu, recall_at_k

MILLION = 1_000_000


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def million_model(tiny_llama_dir: str, device: str) -> MoMEModel:
    torch.manual_seed(0)
    backbone = load_causal_lm(tiny_llama_dir).to(device)
    cfg = MoMEConfig(
        num_experts=MILLION,
        k=8,
        rank=1,
        sites=["model.layers.1.mlp.down_proj"],
        query_layer=1,
        key_dim=16,
        dtype="bfloat16",
    )
    return MoMEModel(backbone, cfg).to(device).train()


def sparse_step(model: MoMEModel, batch) -> torch.Tensor:
    """One MoMETuning-style step (SparseAdam on tables and keys, AdamW on the query); returns the ids."""
    ids, attn, qmask = (t.to(model.router.keys.weight.device) for t in batch)
    tables = model.expert_parameters() + [model.router.keys.weight]
    dense = [p for n, p in model.router.named_parameters() if n != "keys.weight"]
    opts = [torch.optim.SparseAdam(tables, lr=1e-2), torch.optim.AdamW(dense, lr=1e-3)]
    out = model(ids, attention_mask=attn, question_mask=qmask, labels=ids.masked_fill(qmask, -100))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    selected = model.last_routing.ids  # (B, k)
    for p in tables:
        assert p.grad.is_sparse
        assert set(p.grad.coalesce().indices()[0].tolist()) <= set(selected.flatten().tolist())
    for opt in opts:
        opt.step()
    return selected


def check_only_selected_rows_moved(model: MoMEModel, before: dict, selected: torch.Tensor) -> None:
    site = next(iter(model.sites.values()))
    rows = torch.unique(selected)
    assert (site.B.weight[rows] != 0).any(1).all()  # B starts at zero; every selected row moved
    for name, (sample, values) in before.items():
        now = dict(model.named_parameters())[name][sample]
        assert torch.equal(now, values), name  # rows never selected are bit-identical


def sample_rows(model: MoMEModel) -> dict:
    """4,096 random rows of every million-row trainable table (to check they do not move)."""
    g = torch.Generator().manual_seed(1)
    sample = torch.randint(0, MILLION, (4096,), generator=g).to(model.router.keys.weight.device)
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.shape[0] == MILLION]
    return {n: (sample, dict(model.named_parameters())[n][sample].detach().clone()) for n in names}


@pytest.mark.slow
def test_a_million_experts_on_cpu(tiny_llama_dir, batch):
    start = rss_bytes()
    model = million_model(tiny_llama_dir, "cpu")
    site = next(iter(model.sites.values()))
    bank = site.A.weight.nbytes + site.B.weight.nbytes
    assert site.A.weight.dtype == torch.bfloat16 and bank == MILLION * (128 + 64) * 2  # 384 MB
    with torch.no_grad():  # which rows this batch will select (the step below must select the same)
        probe = model.route(*batch).ids
    before = sample_rows(model)
    before = {n: (s[~torch.isin(s, probe)], v[~torch.isin(s, probe)]) for n, (s, v) in before.items()}
    selected = sparse_step(model, batch)
    assert torch.equal(selected, probe)
    check_only_selected_rows_moved(model, before, selected)
    grown = rss_bytes() - start
    # tables 384 MB + keys 64 MB + SparseAdam's dense moments (2x both) ~ 1.35 GB, plus the backbone
    assert grown < 3 * 2**30, f"resident memory grew by {grown / 2**30:.2f} GiB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_million_experts_on_cuda_with_bf16_tables(tiny_llama_dir, batch):
    model = million_model(tiny_llama_dir, "cuda")
    site = next(iter(model.sites.values()))
    assert site.A.weight.is_cuda and site.A.weight.dtype == torch.bfloat16
    with torch.no_grad():
        routing = model.route(*(t.cuda() for t in batch))
    # exact search on the GPU == the same search on the CPU
    queries = routing.queries.reshape(-1, model.config.key_dim)  # (B*heads, d_k)
    keys = model.router.keys.weight
    cpu_ids = exact_topk(queries.cpu(), keys.detach().cpu(), model.config.k)[1]
    assert recall_at_k(routing.ids.reshape(-1, model.config.k).cpu(), cpu_ids) > 0.99  # fp ties only
    before = sample_rows(model)
    before = {
        n: (s[~torch.isin(s, routing.ids)], v[~torch.isin(s, routing.ids)]) for n, (s, v) in before.items()
    }
    selected = sparse_step(model, batch)
    check_only_selected_rows_moved(model, before, selected)
    assert torch.cuda.max_memory_allocated() < 8 * 2**30
    if faiss_has_gpu():  # the flat index moves to the GPU and agrees with exact search
        index = KeyIndex(IndexConfig(kind="flat")).build(keys.detach())
        _, ids = index.search(queries, model.config.k)
        assert ids.is_cuda
        assert recall_at_k(ids.cpu(), exact_topk(queries, keys, model.config.k)[1].cpu()) > 0.99
