"""Task sequences: which classes (and which samples) make each task, with validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from decoding.errors import UserError
from prompt_pool.datasets import ImageSet

Setting = Literal["class", "task", "domain"]
"""class-IL (one head, no task id at test), task-IL (test logits masked to the task's classes),
domain-IL (every task has the same classes, inputs change)."""

ClassOrder = Literal["natural", "shuffle"]


def split_classes(
    classes: list[int], num_tasks: int, order: ClassOrder = "natural", seed: int = 0
) -> list[list[int]]:
    """Cut ``classes`` into ``num_tasks`` equal consecutive groups, in natural or seeded-shuffled order."""
    if num_tasks <= 0 or len(classes) % num_tasks:
        divisors = [d for d in range(1, len(classes) + 1) if len(classes) % d == 0]
        raise UserError(
            f"data.split.num_tasks {num_tasks} does not split the {len(classes)} classes into equal tasks; "
            f"pass --data.split.num_tasks one of {divisors} or give --data.split.task_classes explicitly."
        )
    cls = sorted(classes)
    if order == "shuffle":
        perm = torch.randperm(len(cls), generator=torch.Generator().manual_seed(seed)).tolist()
        cls = [cls[i] for i in perm]
    elif order != "natural":
        raise UserError(f"unknown class_order {order!r}; use 'natural' or 'shuffle'.")
    k = len(cls) // num_tasks
    return [cls[i * k : (i + 1) * k] for i in range(num_tasks)]


def validate_task_classes(task_classes: list[list[int]], available: list[int], setting: Setting) -> None:
    """Raise on empty tasks, classes missing from the data and (outside domain-IL) overlapping tasks."""
    have = set(available)
    seen: dict[int, int] = {}
    for t, cls in enumerate(task_classes):
        if not cls:
            raise UserError(
                f"data.split.task_classes: task {t} has no classes; give every task one class or more."
            )
        missing = sorted(set(cls) - have)
        if missing:
            raise UserError(
                f"data.split.task_classes: task {t} names classes {missing} that the data set lacks "
                f"(it has classes {sorted(have)[:10]}{'...' if len(have) > 10 else ''})."
            )
        if len(set(cls)) != len(cls):
            raise UserError(
                f"data.split.task_classes: task {t} repeats a class: {cls}; list each class once."
            )
        if setting != "domain":
            for c in cls:
                if c in seen:
                    raise UserError(
                        f"data.split.task_classes: tasks {seen[c]} and {t} overlap on class {c}; "
                        "class/task-incremental splits must be disjoint (use --data.split.setting domain for "
                        "shared classes)."
                    )
                seen[c] = t


@dataclass
class Task:
    """One task: its classes and its train/test images."""

    index: int
    classes: list[int]
    train: ImageSet
    test: ImageSet


def class_tasks(train: ImageSet, test: ImageSet, task_classes: list[list[int]]) -> list[Task]:
    """Class/task-incremental tasks: each task keeps the samples of its classes."""

    def pick(s: ImageSet, cls: list[int]) -> ImageSet:
        return s.subset(torch.isin(s.y, torch.tensor(cls)))

    return [Task(t, cls, pick(train, cls), pick(test, cls)) for t, cls in enumerate(task_classes)]


def rotate_domain(x: Tensor, task: int) -> Tensor:
    """Per-task input change of the digits domain-IL variant: rotate 90 deg x (t mod 4); invert tasks 4-7."""
    x = torch.rot90(x, k=task % 4, dims=(-2, -1))
    return 1.0 - x if task // 4 % 2 else x
