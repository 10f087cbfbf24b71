"""Learning without Forgetting (Li & Hoiem 2016): distil the previous model's old-class outputs.

loss = CE + alpha * T^2 * KL(softmax(old_logits / T) || softmax(new_logits / T))   over seen classes
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from decoding.errors import UserError
from prompt_pool.baselines.finetune import FineTune


class LwF(FineTune):
    """Whole-model fine-tuning with knowledge distillation from the model of the previous task.

    Args:
        lwf_alpha: weight of the distillation term.
        temperature: distillation temperature T.
        **kwargs: :class:`FineTune` arguments (``train_backbone`` defaults to True here).
    """

    def __init__(self, lwf_alpha: float = 1.0, temperature: float = 2.0, **kwargs: Any) -> None:
        if not 0 <= lwf_alpha < float("inf"):
            raise UserError(
                f"lwf_alpha={lwf_alpha} is invalid: it must be finite and >= 0; "
                "fix --model.init_args.lwf_alpha."
            )
        if not 0 < temperature < float("inf"):
            raise UserError(
                f"temperature={temperature} is invalid: it must be > 0 (e.g. 2.0); "
                "fix --model.init_args.temperature."
            )
        kwargs.setdefault("train_backbone", True)
        super().__init__(**kwargs)
        self.lwf_alpha, self.temperature = lwf_alpha, temperature
        self.old: nn.ModuleDict | None = None  # frozen copy of backbone + head after the previous task
        self.old_classes: list[int] = []

    def _snapshot(self) -> nn.ModuleDict:
        old = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)})
        return old.requires_grad_(False).eval()

    def begin_task(self, task: int, classes: list[int]) -> None:
        self.old_classes = list(self.seen_classes)
        super().begin_task(task, classes)

    def end_task(self, task: int, dataset: Dataset) -> None:
        super().end_task(task, dataset)
        self.old = self._snapshot()

    def before_load_state(self, state: dict[str, Tensor]) -> None:
        super().before_load_state(state)
        if self.old is None and any(k.startswith("old.") for k in state):
            self.old = self._snapshot()

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        if self.old is None or not self.old_classes:
            return logits.new_zeros(())
        with torch.no_grad():
            self.old.eval()
            feats = self.old["backbone"].pool(self.old["backbone"].encode(x)[0], 0, "cls")
            old_logits = self.old["head"](feats)[:, self.old_classes]  # (B, C_old)
        t = self.temperature
        new = F.log_softmax(logits[:, self.old_classes] / t, dim=-1)
        return (
            self.lwf_alpha * t * t * F.kl_div(new, F.softmax(old_logits / t, dim=-1), reduction="batchmean")
        )
