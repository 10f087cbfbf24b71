"""Elastic weight consolidation (Kirkpatrick et al. 2017), diagonal empirical Fisher, summed over tasks.

loss = CE + (lambda / 2) * sum_p F_p * (theta_p - theta*_p)^2
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from decoding.errors import UserError
from prompt_pool.baselines.finetune import FineTune


def _key(name: str) -> str:
    return name.replace(".", "__")


class EWC(FineTune):
    """Whole-model fine-tuning with the EWC penalty.

    Args:
        ewc_lambda: strength of the penalty.
        fisher_batches: batches of the finished task used to estimate the Fisher (None = all).
        **kwargs: :class:`FineTune` arguments (``train_backbone`` defaults to True here).
    """

    def __init__(self, ewc_lambda: float = 100.0, fisher_batches: int | None = None, **kwargs: Any) -> None:
        if not 0 <= ewc_lambda < float("inf"):
            raise UserError(
                f"ewc_lambda={ewc_lambda} is invalid: it must be finite and >= 0; "
                "fix --model.init_args.ewc_lambda."
            )
        if fisher_batches is not None and fisher_batches < 1:
            raise UserError(
                f"fisher_batches={fisher_batches} is invalid: it must be >= 1 or null (all batches)."
            )
        kwargs.setdefault("train_backbone", True)
        super().__init__(**kwargs)
        self.ewc_lambda, self.fisher_batches = ewc_lambda, fisher_batches

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def end_task(self, task: int, dataset: Dataset) -> None:
        super().end_task(task, dataset)
        params = self._named_trainable()
        fisher = {n: torch.zeros_like(p) for n, p in params}
        was = self.training
        self.eval()
        n_batches = 0
        for b, (x, y, uid) in enumerate(DataLoader(dataset, batch_size=self.batch_size)):
            if self.fisher_batches is not None and b >= self.fisher_batches:
                break
            x, y = x.to(self.device), y.to(self.device)
            self.zero_grad()
            logits, _ = self.logits(x, uid)
            logits = self.mask_logits(logits, self.task_classes) if self.train_mask else logits
            F.cross_entropy(logits, y).backward()
            for n, p in params:
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2
            n_batches += 1
        self.zero_grad()
        self.train(was)
        for n, p in params:
            k = _key(n)
            old = getattr(self, f"fisher__{k}", None)
            f = fisher[n] / max(n_batches, 1)
            self.register_buffer(f"fisher__{k}", f if old is None else old + f)
            self.register_buffer(f"anchor__{k}", p.detach().clone())

    def before_load_state(self, state: dict[str, Tensor]) -> None:
        super().before_load_state(state)
        for name, value in state.items():
            if name.startswith(("fisher__", "anchor__")):
                self.register_buffer(name, torch.empty_like(value, device=self.device))

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        penalty = logits.new_zeros(())
        for n, p in self._named_trainable():
            f = getattr(self, f"fisher__{_key(n)}", None)
            if f is not None:
                penalty = penalty + (f * (p - getattr(self, f"anchor__{_key(n)}")) ** 2).sum()
        return 0.5 * self.ewc_lambda * penalty
