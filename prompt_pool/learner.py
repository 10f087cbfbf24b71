"""The Lightning module shared by L2P and every baseline: train_mask, optimiser, evaluation, add-ons.

A strategy subclasses :class:`ContinualLearner` and implements :meth:`logits` (and optionally
:meth:`extra_loss`, :meth:`begin_task`, :meth:`end_task`). The runner (``prompt_pool.runner``) drives
the task loop; a fresh ``Trainer.fit`` per task re-creates the optimiser (Adam reset per task, as both
codebases do; docs/algorithms/l2p.md, 'Freezing, optimiser, schedule'). Replay, EWC, LwF and usage
tracking are add-ons (``prompt_pool.addons``, Lightning callbacks) that every training step consults:
they combine with any learner.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from decoding.errors import UserError
from decoding.layers import LayerLogits
from prompt_pool.addons.base import ContinualAddon, addons_of
from prompt_pool.backbone import ViTBackbone
from prompt_pool.heads import check_heads_fit, head_predictions, parse_eval_heads


def _check_learner_settings(**settings: Any) -> None:
    """Raise :class:`UserError` for a learner setting out of range (before any model is built)."""
    rules = {
        "num_classes": (lambda v: v >= 1, "an integer >= 1"),
        "lr": (lambda v: 0 < v < math.inf, "a positive finite number, e.g. 0.03"),
        "lr_reference_batch": (lambda v: v is None or v >= 1, "an integer >= 1 or null"),
        "batch_size": (lambda v: v >= 1, "an integer >= 1"),
        "betas": (
            lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        ),
        "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
        "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    }
    for name, value in settings.items():
        ok, expect = rules[name]
        if not ok(value):
            raise UserError(
                f"{name}={value!r} is invalid: it must be {expect}; fix --model.init_args.{name}."
            )


class ContinualLearner(L.LightningModule):
    """Base continual learner.

    Args:
        num_classes: size of the single classifier head (linked from the data module by the CLI).
        backbone: timm ViT name.
        backbone_kwargs: ``timm.create_model`` kwargs (img_size, patch_size, in_chans, embed_dim, depth...).
        pretrained: timm hub weights (offline: use ``checkpoint``).
        checkpoint: local ViT weights (.safetensors), e.g. from ``prompt_pool.pretrain``.
        checkpoint_sha256: pin of the checkpoint file.
        lr: base learning rate; the optimiser uses ``lr * batch_size / lr_reference_batch``.
        lr_reference_batch: batch size at which ``lr`` applies (256 in L2P); None = no scaling.
        batch_size: training batch size (linked from the data module by the CLI).
        betas: Adam betas.
        weight_decay: Adam weight decay.
        train_mask: set training logits outside the current task's classes to -inf before CE.
        seed: seed of parameter initialisation (and of the Replay add-on's choice, unless it has its own).
        eval_heads: decoding heads to evaluate besides the plain argmax, as option strings
            (``sled``, ``dola:dola_layers=low``, ``dera:lam=2``...); each fills its own accuracy matrix
            (docs/prompt_pool.md, 'Decoding heads on a classifier').
    """

    has_reference = False  # a prompt-free reference model for DeRa (L2P: its frozen ViT without prompts)
    num_prompts = 0  # size of the pool the learner selects from; its training steps return the "ids"

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "vit_tiny_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        checkpoint: str | None = None,
        checkpoint_sha256: str | None = None,
        lr: float = 0.03,
        lr_reference_batch: int | None = 256,
        batch_size: int = 16,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        train_mask: bool = True,
        seed: int = 0,
        eval_heads: list[str] | None = None,
    ) -> None:
        super().__init__()
        heads = parse_eval_heads(eval_heads)  # bad specs: one line, before the ViT is built
        _check_learner_settings(
            num_classes=num_classes,
            lr=lr,
            lr_reference_batch=lr_reference_batch,
            batch_size=batch_size,
            betas=tuple(betas),
            weight_decay=weight_decay,
            seed=seed,
        )
        torch.manual_seed(seed)
        self.num_classes, self.lr, self.lr_reference_batch = num_classes, lr, lr_reference_batch
        self.batch_size, self.betas, self.weight_decay = batch_size, tuple(betas), weight_decay
        self.train_mask, self.seed = train_mask, seed
        self.backbone = ViTBackbone(backbone, pretrained, checkpoint, checkpoint_sha256, backbone_kwargs)
        check_heads_fit(heads, self.backbone.depth, num_classes, type(self).__name__, self.has_reference)
        self.heads = heads
        self.task = 0
        self.task_classes: list[int] = list(range(num_classes))
        self.seen_classes: list[int] = []
        self.eval_class_masks: list[list[int]] | None = None  # task-IL: classes of each eval loader
        self._correct: dict[int, int] = {}
        self._total: dict[int, int] = {}
        self._head_correct: dict[str, dict[int, int]] = {}
        self.step_offset = 0  # optimiser steps of the finished tasks: logger steps keep increasing

    # ---- to implement ---------------------------------------------------------------------------
    def logits(self, x: Tensor, uid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Class logits (B, C) and auxiliary outputs (e.g. the pull term) for a batch."""
        raise NotImplementedError

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """Strategy-specific loss added to CE (pull constraint, EWC penalty, distillation)."""
        return logits.new_zeros(())

    def layer_logits(self, x: Tensor, uid: Tensor | None = None) -> LayerLogits:
        """Per-layer class logits for the decoding heads: early (N, B, C) from hidden states 0..N-1,
        mature (B, C) bit-identical to ``logits(x, uid)[0]``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer logits")

    def reference_layer_logits(self, x: Tensor, uid: Tensor | None = None, early: bool = True) -> LayerLogits:
        """The prompt-free reference's class logits (DeRa); early rows only when ``early``."""
        raise NotImplementedError(f"{type(self).__name__} has no reference model")

    # ---- task hooks -----------------------------------------------------------------------------
    def begin_task(self, task: int, classes: list[int]) -> None:
        """Called by the runner before fitting task ``task`` on ``classes``."""
        self.task, self.task_classes = task, list(classes)
        self.seen_classes = sorted(set(self.seen_classes) | set(classes))

    def end_task(self, task: int, dataset: torch.utils.data.Dataset) -> None:
        """Called after fitting a task with its training set."""

    def forward(self, x: Tensor, uid: Tensor | None = None) -> Tensor:
        """Class logits (B, C) (what LwF's previous model is called with)."""
        return self.logits(x, uid)[0]

    # ---- optimisation ---------------------------------------------------------------------------
    @property
    def lr_effective(self) -> float:
        """lr * batch / reference batch (0.03 * 16 / 256 = 0.001875 as l2p-pytorch)."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_reference_batch

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that receive optimiser state (everything frozen is excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.trainable_parameters(),
            lr=self.lr_effective,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )

    @staticmethod
    def mask_logits(logits: Tensor, classes: list[int]) -> Tensor:
        """Logits with every class outside ``classes`` set to -inf.  (B, C) -> (B, C)."""
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[torch.as_tensor(classes, device=logits.device)] = True
        return logits.masked_fill(~keep, float("-inf"))

    def on_train_end(self) -> None:
        self.step_offset += self.trainer.global_step

    @property
    def addons(self) -> list[ContinualAddon]:
        """The add-ons among the trainer's callbacks (none without a trainer)."""
        return addons_of(self.trainer)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y, uid = batch
        addons = self.addons
        mask_classes = self.task_classes
        for addon in addons:  # replay: stored samples join the batch, the loss masks to the seen classes
            extended = addon.extend_batch(self, x, y, uid)
            if extended is not None:
                (x, y, uid), mask_classes = extended, self.seen_classes
        logits, aux = self.logits(x, uid)  # (B, C)
        train_logits = self.mask_logits(logits, mask_classes) if self.train_mask else logits
        ce = F.cross_entropy(train_logits, y)
        extra = self.extra_loss(x, y, logits, aux)
        for addon in addons:  # EWC penalty, distillation
            term = addon.loss(self, x, y, uid, logits, aux)
            if term is not None:
                extra = extra + term
        loss = ce + extra
        self.log_dict(
            {"train/loss": loss, "train/ce": ce, "train/extra": extra, "task": float(self.task)},
            prog_bar=True,
            batch_size=x.shape[0],
        )
        # the logger step: Lightning's own restarts with every task's Trainer
        self.log("step", float(self.step_offset + self.trainer.global_step), batch_size=x.shape[0])
        out = {"loss": loss}
        if "ids" in aux:
            out["ids"] = aux["ids"].detach()  # (B, N) selected prompts, for usage tracking
        return out

    # ---- evaluation: one loader per task, dataloader_idx = task id ------------------------------
    def on_validation_epoch_start(self) -> None:
        self._correct, self._total = {}, {}
        self._head_correct = {spec: {} for spec in self.heads}

    def validation_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y, uid = batch
        if self.heads:
            layers = self.layer_logits(x, uid)  # early (N, B, C), mature (B, C)
            logits = layers.mature
        else:
            logits, _ = self.logits(x, uid)
        classes = None if self.eval_class_masks is None else self.eval_class_masks[dataloader_idx]
        if classes is not None:
            logits = self.mask_logits(logits, classes)
        pred = logits.argmax(dim=-1)
        self._correct[dataloader_idx] = self._correct.get(dataloader_idx, 0) + int((pred == y).sum())
        self._total[dataloader_idx] = self._total.get(dataloader_idx, 0) + int(y.numel())
        if self.heads:
            ref = (lambda early: self.reference_layer_logits(x, uid, early)) if self.has_reference else None
            for spec, p in head_predictions(self.heads, layers, ref, classes).items():
                counts = self._head_correct[spec]
                counts[dataloader_idx] = counts.get(dataloader_idx, 0) + int((p == y).sum())

    def eval_counts(self) -> tuple[list[int], list[int]]:
        """(correct, total) per evaluation loader of the last validation run."""
        keys = sorted(self._total)
        return [self._correct[k] for k in keys], [self._total[k] for k in keys]

    def eval_head_counts(self) -> dict[str, list[int]]:
        """``{head spec: correct per evaluation loader}`` of the last validation run."""
        keys = sorted(self._total)
        return {spec: [counts.get(k, 0) for k in keys] for spec, counts in self._head_correct.items()}
