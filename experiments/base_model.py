"""The backbone the studies start from: a tiny LM pretrained on the code knowledge base, or any model.

The fully offline route of docs/algorithms/random_labels.md: first pretrain a tiny transformer on a
synthetic world with learnable structure. :func:`pretrain_base` fully fine-tunes ``backbone`` on
true-answer facts of :mod:`experiments.code_facts` (pairs disjoint from every study split) and saves it with
``save_pretrained`` (atomically, :func:`decoding.run_folder.atomic_write_dir`), so the studies load it by
path like any HF checkpoint; its held-out accuracy is the "before" skill. It also trains the tiny model's
lm_head, so a frozen-backbone method (LoRA, MoME) is not bounded by a random output layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L

from decoding.run_folder import atomic_write_dir
from experiments.progress import EpochBar
from memexp.facts import Fact


@dataclass
class BaseConfig:
    """The starting model.

    Attributes:
        backbone: model folder, hub id or ``tiny:`` name.
        pretrain_facts: true-answer facts of the code KB to pretrain on first (0: use ``backbone`` as is).
        pretrain_epochs: epochs of that pretraining.
        pretrain_lr: its learning rate (AdamW, full fine-tuning).
        batch_size: its batch size.
    """

    backbone: str = "tiny:llama"
    pretrain_facts: int = 400
    pretrain_epochs: int = 30
    pretrain_lr: float = 3e-3
    batch_size: int = 16


def pretrain_base(
    out_dir: Path, cfg: BaseConfig, facts: list[Fact], seed: int, accelerator: str = "cpu"
) -> str:
    """Pretrain ``cfg.backbone`` on ``facts`` into ``out_dir`` (reused when it already exists)."""
    if (out_dir / "config.json").exists():
        return str(out_dir)
    from experiments.cell import GivenFactsDataModule
    from memexp.fact_tuning import FactTuning

    L.seed_everything(seed, verbose=False)
    module = FactTuning(backbone=cfg.backbone, method="full", lr=cfg.pretrain_lr, seed=seed)
    data = GivenFactsDataModule(cfg.backbone, facts, [], cfg.batch_size, seed)
    trainer = L.Trainer(
        max_epochs=cfg.pretrain_epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochBar(f"pretraining the base model on {len(facts)} facts")],
        default_root_dir=str(out_dir.parent),
    )
    trainer.fit(module, datamodule=data)

    def save(tmp: Path) -> None:
        module.model.save_pretrained(tmp)
        data.tokenizer.save_pretrained(tmp)

    atomic_write_dir(out_dir, save)
    return str(out_dir)
