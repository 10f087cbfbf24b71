"""Index: FAISS search == exact torch search; recall@k; staleness is rebuilt or refused; atomic save."""

from __future__ import annotations

import pytest
import torch

from memexp.mome.index import IndexConfig, KeyIndex, exact_topk, keys_fingerprint, recall_at_k


def random_keys(n=2000, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_exact_topk_equals_full_sort():
    keys, q = random_keys(), random_keys(37, seed=1)
    scores, ids = exact_topk(q, keys, 5, chunk=8)
    full = q @ keys.t()
    ref = full.argsort(dim=1, descending=True)[:, :5]
    assert torch.equal(ids, ref)
    torch.testing.assert_close(scores, full.gather(1, ref))


def test_faiss_flat_equals_exact_torch_search():
    keys, q = random_keys(), random_keys(50, seed=1)
    index = KeyIndex(IndexConfig(kind="flat")).build(keys)
    scores, ids = index.search(q, 8)
    ref_scores, ref_ids = exact_topk(q, keys, 8)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert ids.dtype == torch.int64


def test_ivf_probing_every_list_is_exact_and_recall_is_measured():
    keys, q = random_keys(), random_keys(40, seed=2)
    full = KeyIndex(IndexConfig(kind="ivf", nlist=16, nprobe=16)).build(keys)
    assert full.recall(q, 10) == 1.0
    one = KeyIndex(IndexConfig(kind="ivf", nlist=16, nprobe=1)).build(keys)
    _, approx = one.search(q, 10)
    _, exact = exact_topk(q, keys, 10)
    by_hand = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)) / exact.numel()
    assert one.recall(q, 10) == pytest.approx(by_hand)
    assert by_hand < 1.0  # one list of 16 misses neighbours on random keys


def test_hnsw_search_returns_valid_neighbours():
    keys, q = random_keys(), random_keys(20, seed=3)
    index = KeyIndex(IndexConfig(kind="hnsw", ef_search=256)).build(keys)
    assert index.recall(q, 5) > 0.9


def test_recall_at_k_by_hand():
    assert recall_at_k(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[2, 9], [4, 3]])) == 0.75


@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_stale_index_is_rebuilt_never_used(kind):
    keys = random_keys(200)
    index = KeyIndex(IndexConfig(kind=kind)).build(keys)
    q = random_keys(5, seed=4)
    with torch.no_grad():
        keys.mul_(-1.0)  # in place: the top-k now flips
    _, ids = index.search(q, 3, keys=keys)
    assert torch.equal(ids, exact_topk(q, keys, 3)[1])
    if kind == "flat":
        assert index.fingerprint == keys_fingerprint(keys)


def test_stale_index_is_refused_when_asked():
    keys = random_keys(200)
    index = KeyIndex(IndexConfig(kind="flat", on_stale="error")).build(keys)
    with torch.no_grad():
        keys[0, 0] += 1.0
    with pytest.raises(ValueError, match="changed since the index was built"):
        index.search(random_keys(2), 3, keys=keys)


def test_new_tensor_with_same_values_is_not_stale():
    keys = random_keys(100)
    index = KeyIndex(IndexConfig(kind="flat", on_stale="error")).build(keys)
    assert not index.is_stale(keys.clone())


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_reload_gives_same_results(tmp_path, kind):
    keys, q = random_keys(), random_keys(10, seed=5)
    index = KeyIndex(IndexConfig(kind=kind, nlist=8, nprobe=2)).build(keys)
    index.save(tmp_path / "idx")
    again = KeyIndex.load(tmp_path / "idx", keys)
    assert torch.equal(again.search(q, 4)[1], index.search(q, 4)[1])
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")


def test_reload_for_changed_keys_rebuilds_or_refuses(tmp_path):
    keys = random_keys(300)
    KeyIndex(IndexConfig(kind="flat")).build(keys).save(tmp_path / "a")
    KeyIndex(IndexConfig(kind="flat", on_stale="error")).build(keys).save(tmp_path / "b")
    other = random_keys(300, seed=9)
    rebuilt = KeyIndex.load(tmp_path / "a", other)
    q = random_keys(4, seed=6)
    assert torch.equal(rebuilt.search(q, 3)[1], exact_topk(q, other, 3)[1])
    with pytest.raises(ValueError, match="changed since"):
        KeyIndex.load(tmp_path / "b", other)


def test_dimension_mismatch_is_an_error(tmp_path):
    keys = random_keys(100, d=16)
    index = KeyIndex(IndexConfig(kind="flat")).build(keys)
    index.save(tmp_path / "i")
    with pytest.raises(ValueError, match="index dimension 16 differs from key dimension 8"):
        KeyIndex.load(tmp_path / "i", random_keys(100, d=8))
    with pytest.raises(ValueError, match="query dimension 8"):
        index.search(random_keys(2, d=8), 3)
    with pytest.raises(ValueError, match="index dimension 16 differs"):
        index.search(random_keys(2), 3, keys=random_keys(100, d=8))


def test_bad_settings():
    with pytest.raises(ValueError, match="'pq'"):
        IndexConfig(kind="pq")
    index = KeyIndex().build(random_keys(10))
    with pytest.raises(ValueError, match="k=11"):
        index.search(random_keys(1), 11)


def test_rebuild_every_n_searches_while_keys_train():
    keys = random_keys(300)
    index = KeyIndex(IndexConfig(kind="flat", rebuild_every=3)).build(keys)
    q = random_keys(4, seed=7)
    old = exact_topk(q, keys, 3)[1]
    with torch.no_grad():
        keys.mul_(-1.0)
    new = exact_topk(q, keys, 3)[1]
    assert torch.equal(index.search(q, 3, keys=keys)[1], old)  # lags by design (opt-in)
    assert torch.equal(index.search(q, 3, keys=keys)[1], old)
    assert torch.equal(index.search(q, 3, keys=keys)[1], new)  # third search rebuilds first
