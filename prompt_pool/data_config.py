"""The task-sequence data module's settings, four small dataclasses (YAML: ``data.source``, ``data.split``,
``data.loader``, ``data.images``; LightningCLI reads their fields and attribute docstrings)::

    data:
      dataset: digits                       # a registered source (prompt_pool.sources)
      source: {root: null, seed: 0}         # where / how the source reads its images
      split: {setting: class, num_tasks: 5} # how the images become tasks
      loader: {batch_size: 16}              # DataLoaders
      images: {image_size: null}            # per-sample resize, channels, augmentation
"""

from __future__ import annotations

from dataclasses import dataclass

from prompt_pool.task_split import ClassOrder, Setting


@dataclass(frozen=True)
class SourceConfig:
    """What a data source reads."""

    root: str | None = None
    """The folder of a local data set (cifar100, five_datasets, core50)."""
    digits_pretrain_fraction: float = 0.3
    """digits: the share reserved for backbone pretraining (never in a task)."""
    five_datasets_order: list[str] | None = None
    """five_datasets: the sub-folders of ``root`` in task order (default: the official JAX order)."""
    synthetic_classes: int = 10
    """synthetic: the number of classes."""
    synthetic_image_size: int = 8
    """synthetic: the side of the images."""
    seed: int = 0
    """synthetic: the seed of the images (the digits split is fixed)."""


@dataclass(frozen=True)
class SplitConfig:
    """How a source's images become a task sequence."""

    setting: Setting = "class"
    """``class`` (default), ``task`` (evaluation masked to the task's classes) or ``domain`` incremental."""
    num_tasks: int = 5
    """Tasks when the classes are split automatically (5 for digits, 10 for CIFAR-100)."""
    task_classes: list[list[int]] | None = None
    """Explicit class lists per task (overrides ``num_tasks`` and ``class_order``)."""
    class_order: ClassOrder = "natural"
    """``natural`` or seeded ``shuffle`` (seed ``order_seed``)."""
    order_seed: int = 0
    """Seed of the shuffled class order."""
    joint: bool = False
    """Train once on the union of all tasks (upper bound); evaluation is still per task."""


@dataclass(frozen=True)
class LoaderConfig:
    """The DataLoaders."""

    batch_size: int = 16
    """Training batch size (also scales the learning rate)."""
    eval_batch_size: int = 16
    """Evaluation batch size (16 matches the references under the batch vote)."""
    num_workers: int = 0
    """DataLoader workers."""


@dataclass(frozen=True)
class ImageConfig:
    """Per-sample image processing."""

    image_size: int | None = None
    """Resize images to this square size when given, e.g. 224 for ViT-B/16."""
    channels: int | None = None
    """Repeat single-channel images to 3 channels when set to 3."""
    augment: bool = False
    """RandomResizedCrop(0.05-1) + flip on training images (disables the query cache)."""
