"""Helpers for the experiments tests: the quick tiny model and tiny study settings."""

from __future__ import annotations

from experiments.base_model import BaseConfig
from experiments.cell import TrainConfig

QUICK_MODEL = "tiny:llama?hidden=64&layers=2"
TINY_MOME = {  # a small bank on the last block of the quick model
    "mome": {
        "num_experts": 256,
        "k": 4,
        "rank": 2,
        "sites": ["model.layers.[1].mlp.down_proj"],
        "query_layer": 1,
        "key_dim": 16,
        "index": {"kind": "flat"},
    },
    "phase1_epochs": 1,
    "lr": 2e-2,
}


def tiny_train(**overrides) -> TrainConfig:
    """A few epochs of full fine-tuning / LoRA with a high learning rate, evaluating every epoch."""
    cfg = TrainConfig(
        max_epochs=3,
        batch_size=4,
        eval_every=1,
        stop_when_fit=False,
        method_options={
            "full": {"lr": 3e-3},
            "lora": {"lr": 3e-3, "lora_r": 4, "lora_alpha": 8.0},
            "mome": TINY_MOME,
        },
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_base() -> BaseConfig:
    """The quick tiny model used as is (no pretraining)."""
    return BaseConfig(backbone=QUICK_MODEL, pretrain_facts=0)
