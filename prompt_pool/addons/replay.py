"""Experience replay as an add-on: a class-balanced buffer whose samples join every training batch.

With L2P it is L2P-R of the paper's Table 1; with whole-model fine-tuning it is ER.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from decoding.errors import UserError
from prompt_pool.addons.base import ContinualAddon
from prompt_pool.replay import ReplayBuffer

if TYPE_CHECKING:
    from prompt_pool.learner import ContinualLearner


class Replay(ContinualAddon):
    """Rehearsal: keep ``per_class`` training samples of every class and add a batch of them (drawn
    uniformly with replacement, as many as the batch) to every training step; the loss of an extended
    batch masks to the classes seen so far instead of the task's.

    Args:
        per_class: samples stored per class (the paper's L2P-R: 10 or 50 per class on CIFAR-100).
        seed: seed of the choice of stored samples (offset by the task); None = the learner's seed.
    """

    def __init__(self, per_class: int = 10, seed: int | None = None) -> None:
        if not per_class >= 1:
            raise UserError(f"Replay per_class={per_class!r} is invalid: it must be an integer >= 1.")
        self.per_class, self.seed = per_class, seed
        self.buffer: ReplayBuffer | None = None

    def _buffer(self, learner: ContinualLearner) -> ReplayBuffer:
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.per_class)
        self.buffer.seed = learner.seed if self.seed is None else self.seed
        return self.buffer.to(learner.device)

    def begin_task(self, learner: ContinualLearner, task: int, classes: Sequence[int]) -> None:
        self._buffer(learner)

    def end_task(self, learner: ContinualLearner, task: int, dataset: Dataset) -> None:
        self._buffer(learner).add(dataset, learner.task_classes, task)

    def extend_batch(
        self, learner: ContinualLearner, x: Tensor, y: Tensor, uid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        buf = self.buffer
        if buf is None or len(buf) == 0:
            return None
        rx, ry, ruid = buf.sample(x.shape[0], x.device)
        return torch.cat([x, rx]), torch.cat([y, ry]), torch.cat([uid, ruid])

    def state_dict(self) -> dict[str, Any]:
        return {} if self.buffer is None else {k: v.cpu() for k, v in self.buffer.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:  # the seed is set again by begin_task, which a resumed task calls first
            self.buffer = ReplayBuffer(self.per_class)
            self.buffer.resize_like(state_dict, prefix="")
            self.buffer.load_state_dict(state_dict)
