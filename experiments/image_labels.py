"""Image half of the random-label study: scikit-learn digits with corrupted labels on prompt_pool's ViT.

The backbone is :class:`prompt_pool.backbone.ViTBackbone` with the tiny digits ViT pretrained offline on
the 30% of the digits that :func:`prompt_pool.datasets.load_digits_splits` reserves (``tiny:digits``);
a linear classifier head is added. Of the training images (880, or a seeded subset of ``num_train``),
``round(p * n)`` get their label redrawn uniformly over the 10 classes, as [Z] ("corrupted as a uniform
random class", so a tenth keep their true class by chance); on purpose the number is exact and the sets
are nested across p (one seeded permutation, as :func:`experiments.code_facts.corrupt`) instead of [Z]'s
independent coin per image. Methods:

- ``full``: every ViT weight and the head train;
- ``lora``: a peft LoRA adapter (``inject_adapter_in_model``) on ``qkv``, ``proj``, ``fc1``, ``fc2`` of the
  frozen ViT, plus the head.

(MoME is a memory for causal LMs and has no image counterpart here.) Recorded per epoch: mean training
loss, exact-match training accuracy on the labels trained on, test accuracy on true labels.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from decoding.errors import UserError
from decoding.run_folder import atomic_write_json
from experiments.cell import first_epoch_reaching, write_rows
from experiments.code_facts import check_fraction
from experiments.progress import EpochBar
from memexp.checkpointing import RunCheckpoint

IMAGE_METHODS = ("full", "lora")


@dataclass
class ImageStudyConfig:
    """The image half of the random-label study.

    Attributes:
        enabled: run it.
        methods: ``full`` and/or ``lora``.
        max_epochs: epoch budget per cell (stops earlier at 100% training accuracy).
        batch_size: training batch size.
        lr: AdamW learning rate.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        eval_every: epochs between evaluations.
        num_train: train on a seeded subset of this many images (None: all 880).
    """

    enabled: bool = True
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])
    max_epochs: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    lora_r: int = 8
    lora_alpha: float = 16.0
    eval_every: int = 5
    num_train: int | None = None


def corrupt_labels(
    y: torch.Tensor, p: float, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """Give ``round(p * n)`` images a different, uniformly drawn class (nested sets across p)."""
    p = check_fraction(p)
    order = list(range(len(y)))
    random.Random(f"corrupt-order-{seed}").shuffle(order)
    chosen = sorted(order[: round(p * len(y))])
    out = y.clone()
    for i in chosen:
        out[i] = random.Random(f"corrupt-label-{seed}-{i}").randrange(num_classes)
    return out, chosen


class ImageTuning(L.LightningModule):
    """Digits classifier on the tiny pretrained ViT: full fine-tuning or LoRA + a linear head."""

    def __init__(self, method: str = "full", num_classes: int = 10, lr: float = 3e-3, lora_r: int = 8,
                 lora_alpha: float = 16.0, checkpoint: str | None = "tiny:digits") -> None:  # fmt: skip
        super().__init__()
        if method not in IMAGE_METHODS:
            raise UserError(f"unknown image method {method!r}; choose from {list(IMAGE_METHODS)}")
        self.save_hyperparameters()
        from prompt_pool.backbone import ViTBackbone
        from prompt_pool.pretrain import DIGITS_VIT_KWARGS

        self.backbone = ViTBackbone(checkpoint=checkpoint, model_kwargs=DIGITS_VIT_KWARGS, frozen=False)
        self.head = torch.nn.Linear(self.backbone.embed_dim, num_classes)  # before LoRA: same init for all
        if method == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=["qkv", "proj", "fc1", "fc2"])
            inject_adapter_in_model(config, self.backbone.vit)
            for name, param in self.backbone.named_parameters():
                param.requires_grad_("lora_" in name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) from the [CLS] feature."""
        return self.head(self.backbone.encode(x)[0][:, 0])  # (B, 1+L, D) -> (B, D) -> (B, C)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Exact-match accuracy in eval mode."""
        was = self.training
        self.eval()
        acc = (self(x.to(self.device)).argmax(-1).cpu() == y).float().mean().item()
        self.train(was)
        return acc


class ImageProbe(L.Callback):
    """Training loss, training accuracy (labels trained on) and test accuracy (true labels) per evaluation."""

    def __init__(self, train_x, train_y, test_x, test_y, eval_every: int) -> None:
        self.data = (train_x, train_y, test_x, test_y)
        self.eval_every = eval_every
        self.curve: list[dict[str, float]] = []
        self._losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict["curve"])

    def _evaluate(self, trainer: L.Trainer, module: ImageTuning, epochs: int, loss: float) -> None:
        tx, ty, vx, vy = self.data
        row = {"epoch": epochs, "step": trainer.global_step, "train_loss": loss}
        row.update({"train/exact": module.accuracy(tx, ty), "heldout/exact": module.accuracy(vx, vy)})
        self.curve.append(row)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=trainer.global_step)
        if row["train/exact"] == 1.0:
            trainer.should_stop = True

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.curve:
            self._evaluate(trainer, pl_module, 0, float("nan"))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epochs = trainer.current_epoch + 1
        if epochs % self.eval_every == 0 or epochs >= trainer.max_epochs:
            self._evaluate(trainer, pl_module, epochs, sum(self._losses) / max(1, len(self._losses)))


def run_image_cell(
    cell_dir: Path, method: str, p: float, cfg: ImageStudyConfig, seed: int, logger: Any = False
):
    """Train one (p, method) image cell (resuming from its ``last.ckpt``); return its summary."""
    done = cell_dir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    from prompt_pool.datasets import load_digits_splits

    _, train, test = load_digits_splits()
    if cfg.num_train is not None:
        if not 0 < cfg.num_train <= len(train):
            raise UserError(f"image.num_train must be in [1, {len(train)}], got {cfg.num_train}")
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: cfg.num_train]
        train = train.subset(keep.sort().values)
    labels, corrupted = corrupt_labels(train.y, p, 10, seed)
    L.seed_everything(seed, verbose=False)
    module = ImageTuning(method, 10, cfg.lr, cfg.lora_r, cfg.lora_alpha)
    loader = DataLoader(TensorDataset(train.x, labels), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    probe = ImageProbe(train.x, labels, test.x, test.y, cfg.eval_every)
    ckpt_dir = cell_dir / "checkpoints"
    trainer = L.Trainer(
        default_root_dir=str(cell_dir),
        max_epochs=cfg.max_epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=[
            probe,
            RunCheckpoint(dirpath=str(ckpt_dir), every_n_epochs=cfg.eval_every),  # after the probe evaluates
            EpochBar(f"image cell {method} p={p:g}", leave=False),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    last = ckpt_dir / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if last.exists() else None)
    write_rows(cell_dir / "curve.csv", probe.curve)
    first, final = probe.curve[0], probe.curve[-1]
    summary = {
        "method": method,
        "num_train": len(labels),
        "num_corrupted": len(corrupted),
        "num_heldout": len(test.y),
        "trainable_params": sum(q.numel() for q in module.parameters() if q.requires_grad),
        "epochs": int(final["epoch"]),
        "steps": int(final["step"]),
        "final_train_loss": final["train_loss"],
        "final_train_exact": final["train/exact"],
        "heldout_exact_before": first["heldout/exact"],  # random head: chance level
        "heldout_exact_after": final["heldout/exact"],
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    for level in (0.5, 0.9, 1.0):
        epochs, steps = first_epoch_reaching(probe.curve, "train/exact", level)
        summary[f"epochs_to_{int(level * 100)}"], summary[f"steps_to_{int(level * 100)}"] = epochs, steps
    atomic_write_json(done, summary)
    return summary
