"""Index integrity: every change of the key table makes a FAISS index stale, whatever path wrote it.

The tensor's version counter misses writes through ``.data`` and numpy views; the checksum of the keys'
bits (``keys_checksum``) does not. Each edit below is checked on Flat, IVF and HNSW: ``is_stale`` turns
True, ``on_stale="error"`` refuses the search, and ``on_stale="rebuild"`` answers for the new keys.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memexp.mome.index import IndexConfig, KeyIndex, exact_topk, keys_checksum, recall_at_k

KINDS = ["flat", "ivf", "hnsw"]


def make_table(n: int = 300, d: int = 16, sparse: bool = True) -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(n, d, sparse=sparse)  # (E, d) like the router's keys


def make_index(kind: str, keys: torch.Tensor, on_stale: str = "rebuild") -> KeyIndex:
    # IVF probes every list and HNSW searches wide, so each is exact on 300 keys: results are checkable
    cfg = IndexConfig(kind=kind, nlist=4, nprobe=4, ef_search=300, on_stale=on_stale)
    return KeyIndex(cfg).build(keys)


def edit_data_inplace(table: nn.Embedding) -> None:
    table.weight.data.mul_(-1.0)  # .data has its own version counter


def edit_data_one_element(table: nn.Embedding) -> None:
    table.weight.data[7, 3] = torch.nextafter(table.weight.data[7, 3], torch.tensor(1e9))  # one ulp


def edit_data_assign(table: nn.Embedding) -> None:
    table.weight.data = -table.weight.data.clone()  # the parameter object stays, its storage changes


def edit_numpy_view(table: nn.Embedding) -> None:
    table.weight.detach().numpy()[:] *= -1.0


def edit_inplace_no_grad(table: nn.Embedding) -> None:
    with torch.no_grad():
        table.weight.mul_(-1.0)


def edit_load_state_dict(table: nn.Embedding) -> None:
    table.load_state_dict({"weight": -table.weight.detach().clone()})


def edit_sparse_adam_step(table: nn.Embedding) -> None:
    opt = torch.optim.SparseAdam(table.parameters(), lr=0.5)
    table(torch.arange(table.num_embeddings)).sum().neg().backward()  # every row moves
    opt.step()


EDITS = {
    "data_inplace": edit_data_inplace,
    "data_one_ulp": edit_data_one_element,
    "data_assign": edit_data_assign,
    "numpy_view": edit_numpy_view,
    "inplace_no_grad": edit_inplace_no_grad,
    "load_state_dict": edit_load_state_dict,
    "sparse_adam_step": edit_sparse_adam_step,
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_edit_of_the_keys_is_detected(kind, edit):
    table = make_table()
    index = make_index(kind, table.weight)
    refusing = make_index(kind, table.weight, on_stale="error")
    q = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    assert not index.is_stale(table.weight)
    EDITS[edit](table)
    keys = table.weight
    assert index.is_stale(keys), f"{edit} went unnoticed by {kind}"
    with pytest.raises(ValueError, match="changed since the index was built"):
        refusing.search(q, 5, keys=keys)
    _, ids = index.search(q, 5, keys=keys)  # rebuilt before answering
    assert not index.is_stale(keys)
    assert recall_at_k(ids, exact_topk(q, keys, 5)[1]) > 0.95


@pytest.mark.parametrize("kind", KINDS)
def test_a_dense_optimizer_step_is_detected(kind):
    table = make_table(sparse=False)
    index = make_index(kind, table.weight)
    opt = torch.optim.AdamW(table.parameters(), lr=1e-3)
    table(torch.tensor([3])).sum().backward()  # one row gets a gradient; AdamW's decay moves them all
    opt.step()
    assert index.is_stale(table.weight)


def test_rewriting_the_same_values_is_not_stale():
    table = make_table()
    index = make_index("flat", table.weight, on_stale="error")
    table.weight.data.copy_(table.weight.data.clone())
    with torch.no_grad():
        table.weight.copy_(table.weight.clone())  # bumps the version counter, same bits
    assert not index.is_stale(table.weight)
    assert not index.is_stale(table.weight.detach().clone())


def test_checksum_sees_every_bit_and_every_dtype():
    keys = torch.randn(70_000, 8, generator=torch.Generator().manual_seed(2))  # several checksum blocks
    base = keys_checksum(keys)
    assert keys_checksum(keys.clone()) == base
    for row, col in ((0, 0), (8_191, 7), (8_192, 0), (69_999, 5)):
        changed = keys.clone()
        changed[row, col] = -changed[row, col]
        assert keys_checksum(changed) != base, (row, col)
    zero = torch.zeros(4, 3)
    assert keys_checksum(zero) != keys_checksum(-zero)  # +0.0 and -0.0 differ in their bits
    swapped = keys.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert keys_checksum(swapped) != base  # order matters
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        k = keys[:100].to(dtype)
        edited = k.clone()
        edited[5, 5] = -edited[5, 5]
        assert keys_checksum(k) == keys_checksum(k.clone()) != keys_checksum(edited)
    assert keys_checksum(keys[:100].bfloat16())[1] == "torch.bfloat16"
