"""Learning without Forgetting (Li & Hoiem 2016) as an add-on: distil the previous model's outputs on the
classes seen before the current task, for any learner.

    loss += alpha * T^2 * KL(softmax(old_logits / T) || softmax(new_logits / T))   over the old classes

The previous model is the learner itself with its trainable parameters as they were at the end of the
last task (``torch.func.functional_call``): no second copy of the frozen parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from decoding.errors import UserError
from prompt_pool.addons.base import ContinualAddon

if TYPE_CHECKING:
    from prompt_pool.learner import ContinualLearner


class LwF(ContinualAddon):
    """Knowledge distillation from the model of the previous task.

    Args:
        lwf_alpha: weight of the distillation term.
        temperature: distillation temperature T.
    """

    def __init__(self, lwf_alpha: float = 1.0, temperature: float = 2.0) -> None:
        if not 0 <= lwf_alpha < float("inf"):
            raise UserError(
                f"lwf_alpha={lwf_alpha} is invalid: it must be finite and >= 0; fix the LwF callback's "
                "init_args.lwf_alpha."
            )
        if not 0 < temperature < float("inf"):
            raise UserError(
                f"temperature={temperature} is invalid: it must be > 0 (e.g. 2.0); fix the LwF callback's "
                "init_args.temperature."
            )
        self.lwf_alpha, self.temperature = lwf_alpha, temperature
        self.old: dict[str, Tensor] = {}  # trainable parameter name -> value after the previous task
        self.old_classes: list[int] = []

    def begin_task(self, learner: ContinualLearner, task: int, classes: Sequence[int]) -> None:
        self.old_classes = list(learner.seen_classes)  # before the learner adds the new task's classes
        self.old = {n: v.to(learner.device) for n, v in self.old.items()}

    def end_task(self, learner: ContinualLearner, task: int, dataset: Dataset) -> None:
        self.old = {n: p.detach().clone() for n, p in learner.named_parameters() if p.requires_grad}

    def old_logits(self, learner: ContinualLearner, x: Tensor, uid: Tensor | None) -> Tensor:
        """Class logits (B, C) of the previous task's model, in eval mode (no usage counted, no dropout)."""
        was = learner.training
        learner.eval()
        with torch.no_grad():
            out = torch.func.functional_call(learner, self.old, (x, uid), strict=False)
        learner.train(was)
        return out

    def loss(
        self,
        learner: ContinualLearner,
        x: Tensor,
        y: Tensor,
        uid: Tensor,
        logits: Tensor,
        aux: dict[str, Tensor],
    ) -> Tensor | None:
        if not self.old or not self.old_classes:
            return None
        old = self.old_logits(learner, x, uid)[:, self.old_classes]  # (B, C_old)
        t = self.temperature
        new = F.log_softmax(logits[:, self.old_classes] / t, dim=-1)
        return self.lwf_alpha * t * t * F.kl_div(new, F.softmax(old / t, dim=-1), reduction="batchmean")

    def state_dict(self) -> dict[str, Any]:
        return {"old": dict(self.old)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.old = dict(state_dict.get("old", {}))
