"""Data sources registered by name: ``data.dataset`` picks one; a new data set is one class + one call.

::

    class MySource(DataSource):
        needs_root = True                                  # reads --data.root
        def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
            return train, test                             # all classes; the tasks are split for you
    register_source("mine", MySource())

A source that defines its own tasks (5-datasets: one data set per task; CORe50: sessions as domains)
overrides :meth:`DataSource.tasks` instead of :meth:`DataSource.load`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from decoding.errors import UserError
from prompt_pool.data_config import SourceConfig, SplitConfig
from prompt_pool.datasets import (
    ImageSet,
    load_cifar100,
    load_core50,
    load_digits_splits,
    load_image_folder,
    synthetic_splits,
)
from prompt_pool.task_split import (
    Task,
    class_tasks,
    rotate_domain,
    split_classes,
    validate_task_classes,
)

FIVE_DATASETS_ORDER = ["cifar10", "mnist", "svhn", "not_mnist", "fashion_mnist"]  # official JAX order
CORE50_TRAIN_SESSIONS = [1, 2, 4, 5, 6, 8, 9, 11]
CORE50_TEST_SESSIONS = [3, 7, 10]


class DataSource:
    """A named source of images: :meth:`load` all of them, or build the tasks in :meth:`tasks`."""

    needs_root = False  # reads a local folder (data.source.root)

    def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
        """Train and test images of every class."""
        raise NotImplementedError(f"{type(self).__name__} implements neither load() nor tasks()")

    def tasks(self, o: SourceConfig, split: SplitConfig) -> list[Task]:
        """The task sequence: :meth:`load`, then split by classes (class/task-IL) or rotate (domain-IL)."""
        train, test = self.load(o)
        return split_tasks(train, test, split)


def split_tasks(train: ImageSet, test: ImageSet, o: SplitConfig) -> list[Task]:
    """Class/task-IL: disjoint class groups (``task_classes`` or ``num_tasks`` in ``class_order``);
    domain-IL: the same classes, each task's inputs rotated / inverted (:func:`rotate_domain`)."""
    available = sorted(set(train.y.tolist()))
    if o.setting == "domain":
        cls = o.task_classes[0] if o.task_classes else available
        validate_task_classes([cls], available, "domain")
        base = class_tasks(train, test, [cls])[0]
        return [
            Task(
                t,
                cls,
                ImageSet(rotate_domain(base.train.x, t), base.train.y),
                ImageSet(rotate_domain(base.test.x, t), base.test.y),
            )
            for t in range(o.num_tasks)
        ]
    task_classes = o.task_classes
    if task_classes is None:
        task_classes = split_classes(available, o.num_tasks, o.class_order, o.order_seed)
    validate_task_classes(task_classes, available, o.setting)
    return class_tasks(train, test, task_classes)


class Digits(DataSource):
    """scikit-learn's bundled 8x8 digits; ``digits_pretrain_fraction`` is reserved for the backbone."""

    def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
        _, train, test = load_digits_splits(o.digits_pretrain_fraction)
        return train, test


class Synthetic(DataSource):
    """Seeded class prototypes plus noise (fast tests)."""

    def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
        return synthetic_splits(o.synthetic_classes, image_size=o.synthetic_image_size, seed=o.seed)


class Cifar100(DataSource):
    """torchvision's ``<root>/cifar-100-python/{train,test}``, read by a restricted unpickler."""

    needs_root = True

    def load(self, o: SourceConfig) -> tuple[ImageSet, ImageSet]:
        return load_cifar100(o.root)


class FiveDatasets(DataSource):
    """One image folder per task (``<root>/<name>/{train,test}/<class>/``), labels offset (class-IL)."""

    needs_root = True

    def tasks(self, o: SourceConfig, split: SplitConfig) -> list[Task]:
        tasks, offset = [], 0
        for i, name in enumerate(o.five_datasets_order or FIVE_DATASETS_ORDER):
            tr, te = load_image_folder(Path(o.root) / name)
            n = int(tr.y.max()) + 1
            cls = list(range(offset, offset + n))
            tasks.append(Task(i, cls, ImageSet(tr.x, tr.y + offset), ImageSet(te.x, te.y + offset)))
            offset += n
        return tasks


class Core50(DataSource):
    """CORe50 (domain-IL): sessions 1, 2, 4, 5, 6, 8, 9, 11 are the tasks; 3, 7, 10 one test set."""

    needs_root = True

    def tasks(self, o: SourceConfig, split: SplitConfig) -> list[Task]:
        if split.setting != "domain":
            raise UserError(
                f"data.split.setting {split.setting!r} does not fit core50 (domain-incremental); "
                "pass --data.split.setting domain."
            )
        test = load_core50(o.root, CORE50_TEST_SESSIONS)
        test_all = ImageSet(torch.cat([s.x for s in test]), torch.cat([s.y for s in test]))
        trains = load_core50(o.root, CORE50_TRAIN_SESSIONS)
        cls = sorted(set(torch.cat([s.y for s in trains]).tolist()))
        return [Task(i, cls, tr, test_all) for i, tr in enumerate(trains)]


_SOURCES: dict[str, DataSource] = {}


def register_source(name: str, source: DataSource) -> None:
    """Make ``source`` available as ``data.dataset: <name>`` (a name is registered once)."""
    if name in _SOURCES and _SOURCES[name] is not source:
        raise ValueError(f"data source {name!r} is already registered ({type(_SOURCES[name]).__name__})")
    _SOURCES[name] = source


def source_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_SOURCES)


def get_source(name: str) -> DataSource:
    """The source registered as ``name``; UserError listing the names otherwise."""
    if name not in _SOURCES:
        raise UserError(f"unknown data.dataset {name!r}; use one of {', '.join(_SOURCES)}.")
    return _SOURCES[name]


register_source("digits", Digits())
register_source("synthetic", Synthetic())
register_source("cifar100", Cifar100())
register_source("five_datasets", FiveDatasets())
register_source("core50", Core50())
