"""Prompt-usage tracking as an add-on: how often each prompt id is selected while training each task.

It counts the ``ids`` a learner's training step returns (L2P: the selected prompt ids, (B, N)); a learner
that selects nothing (``num_prompts == 0``) leaves it empty. The runner attaches one to every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import Tensor

from prompt_pool.addons.base import ContinualAddon

if TYPE_CHECKING:
    from prompt_pool.learner import ContinualLearner


class PromptUsage(ContinualAddon):
    """Per-task counts of prompt selections in training, ``counts`` (tasks, M) once a task ran."""

    def __init__(self) -> None:
        self.counts: dict[int, Tensor] = {}  # task -> (M,) selections while training it
        self.task = 0

    def begin_task(self, learner: ContinualLearner, task: int, classes: Sequence[int]) -> None:
        self.task = task
        if learner.num_prompts > 0:
            self.counts[task] = torch.zeros(learner.num_prompts, dtype=torch.long)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ids = outputs.get("ids") if isinstance(outputs, dict) else None
        if ids is not None and self.task in self.counts:
            m = self.counts[self.task].numel()
            self.counts[self.task] += torch.bincount(ids.detach().flatten().cpu(), minlength=m)

    def matrix(self, num_tasks: int) -> Tensor | None:
        """(num_tasks, M) counts, zeros for tasks not trained; None for a learner without prompts."""
        if not self.counts:
            return None
        m = next(iter(self.counts.values())).numel()
        out = torch.zeros(num_tasks, m, dtype=torch.long)
        for t, c in self.counts.items():
            out[t] = c
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {str(t): c for t, c in self.counts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = {int(t): c for t, c in state_dict.get("counts", {}).items()}
