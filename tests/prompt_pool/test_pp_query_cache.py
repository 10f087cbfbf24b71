"""Per-sample feature caches never serve a stale augmented crop.

With ``augment: true`` every read of a training sample is another random crop, so features cached by
sample id would be those of the first crop. The data module gives augmented samples the id ``NO_CACHE``
and the cache computes such rows every time: L2P's query cache and the head-only baselines' feature
cache (which once kept its cache on under augmentation and trained on first-crop features) both follow.
"""

from __future__ import annotations

import pytest
import torch

from prompt_pool.baselines import FineTune
from prompt_pool.data_config import ImageConfig, LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.query_cache import NO_CACHE, QueryCache

pytest.importorskip("torchvision")


def test_no_cache_rows_are_computed_every_time_and_never_stored():
    calls = []

    def compute(x: torch.Tensor) -> torch.Tensor:  # (n, 2) -> (n, 3); records how many rows it saw
        calls.append(x.shape[0])
        return torch.cat([x, x.sum(1, keepdim=True)], 1)

    cache = QueryCache()
    x = torch.arange(8.0).reshape(4, 2)
    uid = torch.tensor([0, NO_CACHE, 1, NO_CACHE])
    first = cache.get(uid, x, compute)
    assert torch.equal(first, compute(x))
    calls.clear()
    x2 = x + 100  # new crops for the NO_CACHE rows; rows 0 and 2 are the same samples as before
    second = cache.get(uid, x2, compute)
    assert torch.equal(second[[0, 2]], first[[0, 2]])  # served from the cache
    assert torch.equal(second[[1, 3]], compute(x2[[1, 3]]))  # recomputed from the new input
    assert calls[0] == 2 and int(cache.filled.sum()) == 2 and cache.hits == 2


def test_augmented_training_samples_are_never_cached_by_a_head_only_baseline(tiny_vit_kwargs):
    dm = TaskSequenceDataModule(
        "synthetic",
        source=SourceConfig(synthetic_classes=6),
        split=SplitConfig(num_tasks=3),
        loader=LoaderConfig(batch_size=8),
        images=ImageConfig(augment=True),
    )
    assert (dm.train_dataset(0).uid == NO_CACHE).all()
    assert all((loader.dataset.uid >= 0).all() for loader in dm.test_loaders())  # tests stay cacheable
    model = FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, cache_features=True)
    x, _, uid = next(iter(dm.train_loader(0)))
    a = model.features(x, uid)
    x2, _, uid2 = next(iter(dm.train_loader(0)))  # the same samples, other crops
    b = model.features(x2, uid2)
    assert torch.allclose(b, model.backbone.query(x2), atol=1e-6)  # computed from the new crops
    assert not torch.allclose(a, b)
    assert model.feature_cache.values is None  # nothing was stored
