"""Helpers for the foundation tests: the quick tiny model and a quick Trainer factory."""

from __future__ import annotations

import lightning as L

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
