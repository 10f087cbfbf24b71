"""Fixtures for the foundation tests: small fact sets on the quick tiny model."""

from __future__ import annotations

import lightning as L
import pytest
from memexp_helpers import QUICK_MODEL

from memexp.data import FactsDataModule
from memexp.fact_tuning import FactTuning


@pytest.fixture
def small_facts():
    """(module, datamodule) factory for a few short random facts on the quick tiny model."""

    def make(method: str = "full", n: int = 12, lr: float = 3e-3, **module_kwargs):
        L.seed_everything(0, verbose=False)
        dm = FactsDataModule(
            tokenizer=QUICK_MODEL,
            num_random_facts=n,
            num_heldout=4,
            answer_min_len=6,
            answer_max_len=8,
            batch_size=4,
            eval_batch_size=64,
        )
        module = FactTuning(backbone=QUICK_MODEL, method=method, lr=lr, **module_kwargs)
        return module, dm

    return make
