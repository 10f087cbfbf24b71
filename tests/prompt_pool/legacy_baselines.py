"""The baselines as they were before the add-ons (replay inside the learner's training step, EWC and LwF as
FineTune subclasses), kept only as the plain reference of the equivalence tests: the add-on versions must
give the same losses and accuracy matrices, step for step."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from prompt_pool.baselines import FineTune
from prompt_pool.replay import ReplayBuffer


class LegacyFineTune(FineTune):
    """FineTune with the replay buffer in the learner (the old ``buffer_per_class``)."""

    def __init__(self, buffer_per_class: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replay = ReplayBuffer(buffer_per_class, self.seed) if buffer_per_class > 0 else None

    def end_task(self, task: int, dataset: Dataset) -> None:
        if self.replay is not None:
            self.replay.add(dataset, self.task_classes, task)

    def training_step(self, batch, batch_idx):
        x, y, uid = batch
        mask_classes = self.task_classes
        if self.replay is not None and len(self.replay) > 0:
            rx, ry, ruid = self.replay.sample(x.shape[0], x.device)
            x, y, uid = torch.cat([x, rx]), torch.cat([y, ry]), torch.cat([uid, ruid])
            mask_classes = self.seen_classes
        logits, aux = self.logits(x, uid)
        train_logits = self.mask_logits(logits, mask_classes) if self.train_mask else logits
        ce = F.cross_entropy(train_logits, y)
        return {"loss": ce + self.extra_loss(x, y, logits, aux)}


def _key(name: str) -> str:
    return name.replace(".", "__")


class LegacyEWC(LegacyFineTune):
    def __init__(self, ewc_lambda: float = 100.0, fisher_batches: int | None = None, **kwargs) -> None:
        kwargs.setdefault("train_backbone", True)
        super().__init__(**kwargs)
        self.ewc_lambda, self.fisher_batches = ewc_lambda, fisher_batches

    def _named_trainable(self):
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

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        penalty = logits.new_zeros(())
        for n, p in self._named_trainable():
            f = getattr(self, f"fisher__{_key(n)}", None)
            if f is not None:
                penalty = penalty + (f * (p - getattr(self, f"anchor__{_key(n)}")) ** 2).sum()
        return 0.5 * self.ewc_lambda * penalty


class LegacyLwF(LegacyFineTune):
    def __init__(self, lwf_alpha: float = 1.0, temperature: float = 2.0, **kwargs) -> None:
        kwargs.setdefault("train_backbone", True)
        super().__init__(**kwargs)
        self.lwf_alpha, self.temperature = lwf_alpha, temperature
        self.old: nn.ModuleDict | None = None
        self.old_classes: list[int] = []

    def begin_task(self, task: int, classes: list[int]) -> None:
        self.old_classes = list(self.seen_classes)
        super().begin_task(task, classes)

    def end_task(self, task: int, dataset: Dataset) -> None:
        super().end_task(task, dataset)
        old = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)})
        self.old = old.requires_grad_(False).eval()

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        if self.old is None or not self.old_classes:
            return logits.new_zeros(())
        with torch.no_grad():
            self.old.eval()
            feats = self.old["backbone"].pooled_features(x, None, "cls")[-1]  # as the LwF add-on does
            old_logits = self.old["head"](feats)[:, self.old_classes]
        t = self.temperature
        new = F.log_softmax(logits[:, self.old_classes] / t, dim=-1)
        return (
            self.lwf_alpha * t * t * F.kl_div(new, F.softmax(old_logits / t, dim=-1), reduction="batchmean")
        )
