"""Lightning data module of a continual task sequence: one train loader per task, one test loader per task.

Every sample carries a unique integer id ``uid`` (batch = ``(x, y, uid)``), so that frozen query
features can be cached per sample when inputs are deterministic; with augmentation every training sample
carries ``NO_CACHE`` (-1) instead, so no learner (L2P's query cache, the head-only baselines' feature
cache) can reuse a stale crop's features.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from decoding.errors import UserError
from prompt_pool.data_config import ImageConfig, LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datasets import ImageSet
from prompt_pool.query_cache import NO_CACHE
from prompt_pool.sources import get_source
from prompt_pool.task_split import Task


def _check_settings(
    dataset: str, source: SourceConfig, split: SplitConfig, loader: LoaderConfig, images: ImageConfig
) -> None:
    """Raise :class:`UserError` for a setting out of range, before any data is read."""
    src = get_source(dataset)
    if split.setting not in ("class", "task", "domain"):
        raise UserError(f"unknown data.split.setting {split.setting!r}; use 'class', 'task' or 'domain'.")
    sizes = {
        "split.num_tasks": split.num_tasks,
        "loader.batch_size": loader.batch_size,
        "loader.eval_batch_size": loader.eval_batch_size,
        "images.image_size": images.image_size,
        "source.synthetic_classes": source.synthetic_classes,
        "source.synthetic_image_size": source.synthetic_image_size,
    }
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise UserError(f"data.{name} must be >= 1, got {value}; pass --data.{name} <positive integer>.")
    if loader.num_workers < 0:
        raise UserError(f"data.loader.num_workers must be >= 0, got {loader.num_workers}.")
    if images.channels not in (None, 1, 3):
        raise UserError(f"data.images.channels must be 1 or 3 (or unset), got {images.channels}.")
    if not 0 <= source.digits_pretrain_fraction < 1:
        raise UserError(
            "data.source.digits_pretrain_fraction must be in [0, 1), got "
            f"{source.digits_pretrain_fraction} (default 0.3)."
        )
    if src.needs_root:
        if source.root is None:
            raise UserError(
                f"data.dataset {dataset!r} reads a local folder: pass --data.source.root <folder>."
            )
        if not Path(source.root).is_dir():
            raise UserError(
                f"data.source.root {source.root!r} is not a folder; pass --data.source.root <the folder that "
                f"holds {dataset}>."
            )


class TaskDataset(Dataset):
    """Images of one task and split with their global ids; resized and augmented per sample.

    Images stay at their stored size in memory (CIFAR-100 at 224x224 would need 30 GB); ``image_size``
    resizes each sample when it is read, and augmentation (RandomResizedCrop to ``image_size``) too.
    """

    def __init__(
        self, images: ImageSet, uid_offset: int, augment: bool = False, image_size: int | None = None
    ) -> None:
        self.x, self.y = images.x, images.y
        self.image_size = image_size
        self.uid = torch.arange(uid_offset, uid_offset + len(images))
        if augment:  # every read is another crop: no learner may cache features by sample id
            self.uid = torch.full_like(self.uid, NO_CACHE)
        self.augment = augment
        self._aug = None
        if augment:
            try:
                from torchvision.transforms import v2
            except ImportError as err:  # torchvision is only needed for augmentation
                raise ImportError("augment=True needs torchvision (pip install torchvision).") from err

            size = (image_size, image_size) if image_size else tuple(images.x.shape[-2:])
            self._aug = v2.Compose(
                [v2.RandomResizedCrop(size, scale=(0.05, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            )

    def __len__(self) -> int:
        return len(self.y)

    def prepare(self, x: Tensor) -> Tensor:
        """Resize stored images (n, C, H, W) to ``image_size`` (no augmentation)."""
        if self.image_size is None or tuple(x.shape[-2:]) == (self.image_size, self.image_size):
            return x
        return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        x = self.prepare(self.x[i : i + 1])[0] if self._aug is None else self._aug(self.x[i])
        return x, self.y[i], self.uid[i]


class TaskSequenceDataModule(L.LightningDataModule):
    """A sequence of tasks over one data source.

    Args:
        dataset: a registered source (:mod:`prompt_pool.sources`): ``digits`` (bundled),
            ``synthetic``, or ``cifar100``/``five_datasets``/``core50`` (local ``source.root``).
        source: what the source reads (folder, digits pretraining share, synthetic size and seed).
        split: how the images become tasks (setting, number of tasks or explicit classes, class order,
            joint training).
        loader: batch sizes and workers.
        images: per-sample resize, channels and augmentation.
    """

    def __init__(
        self,
        dataset: str = "digits",
        source: SourceConfig = SourceConfig(),  # frozen dataclasses: safe defaults
        split: SplitConfig = SplitConfig(),
        loader: LoaderConfig = LoaderConfig(),
        images: ImageConfig = ImageConfig(),
    ) -> None:
        super().__init__()
        _check_settings(dataset, source, split, loader, images)
        self.save_hyperparameters()
        self.source, self.split, self.loader, self.images = source, split, loader, images
        self.batch_size, self.eval_batch_size = loader.batch_size, loader.eval_batch_size
        self.setting, self.augment, self.joint = split.setting, images.augment, split.joint
        channels, augment, image_size = images.channels, images.augment, images.image_size
        self.tasks = get_source(dataset).tasks(source, split)
        self.tasks = [
            Task(
                t.index,
                t.classes,
                self._fit(t.train, channels),
                self._fit(t.test, channels),
            )
            for t in self.tasks
        ]
        self.num_classes = 1 + max(c for t in self.tasks for c in t.classes)
        offset = 0
        self._train_sets, self._test_sets = [], []
        for t in self.tasks:
            self._train_sets.append(TaskDataset(t.train, offset, augment, image_size))
            offset += len(t.train)
            self._test_sets.append(TaskDataset(t.test, offset, image_size=image_size))
            offset += len(t.test)
        self.num_uids = offset

    @staticmethod
    def _fit(s: ImageSet, channels: int | None) -> ImageSet:
        """Repeat single-channel images to ``channels`` (a view, no copy)."""
        x = s.x
        if channels is not None and channels != x.shape[1]:
            if x.shape[1] != 1:
                raise UserError(f"cannot convert {x.shape[1]}-channel images to {channels} channels.")
            x = x.expand(-1, channels, -1, -1)
        return ImageSet(x, s.y)

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the sequence."""
        return len(self.tasks)

    def train_dataset(self, task: int) -> Dataset:
        """Training set of one task (of all tasks when ``joint``)."""
        if self.joint:
            return torch.utils.data.ConcatDataset(self._train_sets)
        return self._train_sets[task]

    def train_loader(self, task: int, seed: int = 0) -> DataLoader:
        """Shuffled training loader of a task, seeded for reproducible (resumable) runs."""
        g = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.train_dataset(task),
            batch_size=self.batch_size,
            shuffle=True,
            generator=g,
            num_workers=self.loader.num_workers,
        )

    def test_loaders(self, upto: int | None = None) -> list[DataLoader]:
        """One evaluation loader per task 0..upto (all tasks by default)."""
        sets = self._test_sets if upto is None else self._test_sets[: upto + 1]
        return [
            DataLoader(s, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.loader.num_workers)
            for s in sets
        ]
