"""Elastic weight consolidation (Kirkpatrick et al. 2017) as an add-on: diagonal empirical Fisher, summed
over tasks, on whatever the learner trains (a whole ViT, or L2P's prompts, keys and head).

    loss += (lambda / 2) * sum_p F_p * (theta_p - theta*_p)^2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from decoding.errors import UserError
from prompt_pool.addons.base import ContinualAddon

if TYPE_CHECKING:
    from prompt_pool.learner import ContinualLearner


class EWC(ContinualAddon):
    """EWC penalty towards the parameters after each task, weighted by their Fisher information.

    Args:
        ewc_lambda: strength of the penalty.
        fisher_batches: batches of the finished task used to estimate the Fisher (None = all).
    """

    def __init__(self, ewc_lambda: float = 100.0, fisher_batches: int | None = None) -> None:
        if not 0 <= ewc_lambda < float("inf"):
            raise UserError(
                f"ewc_lambda={ewc_lambda} is invalid: it must be finite and >= 0; fix the EWC callback's "
                "init_args.ewc_lambda."
            )
        if fisher_batches is not None and fisher_batches < 1:
            raise UserError(
                f"fisher_batches={fisher_batches} is invalid: it must be >= 1 or null (all batches)."
            )
        self.ewc_lambda, self.fisher_batches = ewc_lambda, fisher_batches
        self.fisher: dict[str, Tensor] = {}  # parameter name -> F, summed over finished tasks
        self.anchor: dict[str, Tensor] = {}  # parameter name -> theta* after the last task

    @staticmethod
    def _trainable(learner: ContinualLearner) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in learner.named_parameters() if p.requires_grad]

    def begin_task(self, learner: ContinualLearner, task: int, classes: Sequence[int]) -> None:
        self.fisher = {n: f.to(learner.device) for n, f in self.fisher.items()}
        self.anchor = {n: a.to(learner.device) for n, a in self.anchor.items()}

    def end_task(self, learner: ContinualLearner, task: int, dataset: Dataset) -> None:
        params = self._trainable(learner)
        fisher = {n: torch.zeros_like(p) for n, p in params}
        was = learner.training
        learner.eval()
        n_batches = 0
        with torch.enable_grad():
            for b, (x, y, uid) in enumerate(DataLoader(dataset, batch_size=learner.batch_size)):
                if self.fisher_batches is not None and b >= self.fisher_batches:
                    break
                x, y = x.to(learner.device), y.to(learner.device)
                learner.zero_grad()
                logits, _ = learner.logits(x, uid)
                if learner.train_mask:
                    logits = learner.mask_logits(logits, learner.task_classes)
                F.cross_entropy(logits, y).backward()
                for n, p in params:
                    if p.grad is not None:
                        fisher[n] += p.grad.detach() ** 2
                n_batches += 1
        learner.zero_grad()
        learner.train(was)
        for n, p in params:
            f = fisher[n] / max(n_batches, 1)
            self.fisher[n] = f if n not in self.fisher else self.fisher[n] + f
            self.anchor[n] = p.detach().clone()

    def loss(
        self,
        learner: ContinualLearner,
        x: Tensor,
        y: Tensor,
        uid: Tensor,
        logits: Tensor,
        aux: dict[str, Tensor],
    ) -> Tensor | None:
        if not self.fisher:
            return None
        penalty = logits.new_zeros(())
        for n, p in self._trainable(learner):
            f = self.fisher.get(n)
            if f is not None:
                penalty = penalty + (f * (p - self.anchor[n]) ** 2).sum()
        return 0.5 * self.ewc_lambda * penalty

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher), "anchor": dict(self.anchor)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fisher = dict(state_dict.get("fisher", {}))
        self.anchor = dict(state_dict.get("anchor", {}))
