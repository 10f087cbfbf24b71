"""Fixtures of the prompt_pool tests: a tiny random timm ViT and a seeded synthetic task sequence."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

TINY_VIT = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The CI box is 2 cores shared by several jobs: one intra-op thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(eval mode|val_dataloader|log_every_n_steps|LeafSpec).*")
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_vit_kwargs() -> dict:
    return dict(TINY_VIT)


@pytest.fixture
def make_trainer():
    """Factory of real Trainers without logger (unless given), checkpoints or bars (clipping as L2P)."""

    def make(max_epochs: int = 1, logger=False, **kw) -> L.Trainer:
        return L.Trainer(
            max_epochs=max_epochs,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            gradient_clip_algorithm="norm",
            accelerator="cpu",
            **kw,
        )

    return make


@pytest.fixture(scope="session")
def base_args() -> Callable[[Path], list[str]]:
    """``prompt-pool fit`` arguments of a valid tiny run (synthetic data, random tiny ViT, 1 epoch, no
    logger) into a given run folder."""
    config = Path(__file__).resolve().parents[2] / "configs" / "prompt_pool" / "split_digits.yaml"

    def args(out: Path) -> list[str]:
        return [
            "fit",
            "--config",
            str(config),
            "--data.dataset",
            "synthetic",
            "--data.split.num_tasks",
            "2",
            "--data.source.synthetic_classes",
            "4",
            "--model.init_args.checkpoint",
            "null",
            "--model.init_args.backbone_kwargs",
            json.dumps(TINY_VIT),
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--runner.out_dir",
            str(out),
        ]

    return args
