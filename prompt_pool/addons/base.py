"""Continual-learning add-ons: Lightning callbacks that combine with any learner (module vs plugin).

An add-on is a :class:`lightning.Callback` that the task runner and the learner also call at the
continual-learning points (avalanche's strategy/plugin split, in Lightning terms)::

    runner:   addon.begin_task(learner, t, classes)      before learner.begin_task and fit
    learner:  addon.extend_batch(learner, x, y, uid)     each training step (replay adds stored samples)
              addon.loss(learner, x, y, uid, logits, aux)  each step (EWC penalty, distillation)
    runner:   addon.end_task(learner, t, train_set)      after fit (fill a buffer, a Fisher, a snapshot)
              addon.state_dict() / load_state_dict()     in state.pt, so a killed run resumes exactly

Add-ons go in ``trainer.callbacks`` (YAML: ``trainer: callbacks: [{class_path: prompt_pool.addons.EWC}]``).
A fresh Trainer runs every task, so its factory must hand every Trainer the **same** add-on instances
(the CLI does); the runner refuses other ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from prompt_pool.learner import ContinualLearner


class ContinualAddon(L.Callback):
    """Base class of the add-ons: every hook is optional (a no-op here)."""

    def begin_task(self, learner: ContinualLearner, task: int, classes: Sequence[int]) -> None:
        """Called before the learner starts task ``task`` on ``classes`` (before its seen classes grow)."""

    def end_task(self, learner: ContinualLearner, task: int, dataset: Dataset) -> None:
        """Called after fitting task ``task`` with its training set."""

    def extend_batch(
        self, learner: ContinualLearner, x: Tensor, y: Tensor, uid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """A training batch with extra samples (the loss then masks to the seen classes), or None."""
        return None

    def loss(
        self,
        learner: ContinualLearner,
        x: Tensor,
        y: Tensor,
        uid: Tensor,
        logits: Tensor,
        aux: dict[str, Tensor],
    ) -> Tensor | None:
        """A term added to the training loss, or None."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and lists only (``state.pt`` is read with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""


def addons_of(trainer: L.Trainer | None) -> list[ContinualAddon]:
    """The add-ons among a trainer's callbacks, in their order."""
    if trainer is None:
        return []
    return [cb for cb in trainer.callbacks if isinstance(cb, ContinualAddon)]
