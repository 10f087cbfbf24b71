"""Class-balanced rehearsal buffer (experience replay; with L2P it gives L2P-R of the paper's Table 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


def _labels_of(dataset: Dataset) -> tuple[Tensor, Callable[[Tensor], Tensor], Tensor]:
    """(y, images-of-rows function, uid) of a TaskDataset or of any dataset yielding (x, y, uid).

    Images are materialised only for the rows kept (resized, not augmented, for a TaskDataset).
    """
    if all(hasattr(dataset, a) for a in ("x", "y", "uid", "prepare")):
        return dataset.y, lambda k: dataset.prepare(dataset.x[k]), dataset.uid
    items = [dataset[i] for i in range(len(dataset))]
    return (
        torch.stack([it[1] for it in items]),
        lambda k: torch.stack([items[i][0] for i in k.tolist()]),
        torch.stack([it[2] for it in items]),
    )


class ReplayBuffer(nn.Module):
    """Keeps ``per_class`` training samples of every class seen so far (buffers, so they checkpoint).

    Args:
        per_class: samples stored per class (the paper's L2P-R uses 10 or 50 per class on CIFAR-100).
        seed: seed of the choice of stored samples (offset by the task index).
    """

    def __init__(self, per_class: int, seed: int = 0) -> None:
        super().__init__()
        if per_class <= 0:
            raise ValueError(f"buffer per_class must be >= 1, got {per_class}.")
        self.per_class, self.seed = per_class, seed
        self.register_buffer("x", torch.zeros(0))
        self.register_buffer("y", torch.zeros(0, dtype=torch.long))
        self.register_buffer("uid", torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.y.numel())

    def add(self, dataset: Dataset, classes: list[int], task: int) -> None:
        """Store up to ``per_class`` random samples of each class in ``classes`` from ``dataset``."""
        y, images, uid = _labels_of(dataset)
        g = torch.Generator().manual_seed(self.seed + 1000 + task)
        keep = []
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[: self.per_class]])
        k = torch.cat(keep)
        new_x = images(k).to(self.y.device)
        self.x = new_x if len(self) == 0 else torch.cat([self.x, new_x])
        self.y = torch.cat([self.y, y[k].to(self.y.device)])
        self.uid = torch.cat([self.uid, uid[k].to(self.y.device)])

    def sample(self, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """n samples drawn uniformly with replacement (global RNG, seeded per task by the runner)."""
        i = torch.randint(len(self), (n,))
        return self.x[i].to(device), self.y[i].to(device), self.uid[i].to(device)

    def class_counts(self, num_classes: int) -> Tensor:
        """Stored samples per class (C,)."""
        return torch.bincount(self.y.cpu(), minlength=num_classes)

    def resize_like(self, state: dict[str, Tensor], prefix: str) -> None:
        """Give the buffers the shapes found in a state dict so that ``load_state_dict`` can fill them."""
        for name in ("x", "y", "uid"):
            if prefix + name in state:
                setattr(self, name, torch.empty_like(state[prefix + name], device=self.y.device))
