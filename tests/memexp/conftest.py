"""Fixtures for the foundation tests: small fact sets and a quick Trainer factory."""

from __future__ import annotations

import lightning as L
import pytest

from memexp.data import FactsDataModule
from memexp.module import FactTuning

QUICK_MODEL = "tiny:llama?hidden=64&layers=2"


def quick_trainer(root, max_epochs: int, **kwargs) -> L.Trainer:
    """A CPU Trainer without logger or progress bar that evaluates every epoch."""
    defaults = dict(
        default_root_dir=str(root),
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


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
