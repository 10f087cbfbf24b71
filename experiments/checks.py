"""Checks of the studies' settings, run before any work starts: a refused start leaves no trace.

Each check raises :class:`decoding.errors.UserError` naming the setting, its value and the fix. Decoding
heads are parsed by :func:`decoding.head_spec.parse_head_spec` and checked against the backbone's layer
count and vocabulary, read from its name or ``config.json`` (no weights are loaded, nothing is built).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from decoding.errors import UserError
from decoding.head_spec import ModelLayout, check_head_fits, model_layout, parse_head_spec
from experiments.methods import available_methods, check_method, check_method_options

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def check_number(
    name: str, value: Any, low: float, *, integer: bool = False, low_open: bool = False, example: Any = None
) -> None:
    """Refuse ``value`` unless it is a finite number >= ``low`` (> if ``low_open``; whole if ``integer``)."""
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if not ok:
        what = "a whole number" if integer else "a number"
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        hint = f", e.g. {example}" if example is not None else ""
        raise UserError(f"{name}={value!r} must be {what} {bound}{hint}")


def check_seeds(seeds: Any) -> None:
    """Refuse anything but a non-empty list of distinct whole numbers >= 0."""
    ok = isinstance(seeds, list | tuple) and len(seeds) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds={seeds!r} must be a list of distinct whole numbers >= 0, e.g. [0, 1, 2]")


def check_output(output_root: str, run: str) -> None:
    """The run folder can be made: ``run`` is one folder name and ``output_root`` is not a file."""
    if not run or Path(run).name != run or run in (".", ".."):
        raise UserError(f"run={run!r} must be one folder name (no '/'), e.g. --run quick")
    if Path(output_root).exists() and not Path(output_root).is_dir():
        raise UserError(f"output_root={output_root!r} is a file; pass a folder for the results")


def check_backbone(backbone: str) -> ModelLayout | None:
    """The backbone's layout; UserError for a local path that does not exist or a bad ``tiny:`` name."""
    name = str(backbone)
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if not name.startswith("tiny:") and local and not Path(name).expanduser().exists():
        raise UserError(
            f"base.backbone={name!r} does not exist; pass a folder written by save_pretrained, a hub id, "
            "or tiny:llama"
        )
    return model_layout(name)


def check_base(base: Any) -> ModelLayout | None:
    """Check a :class:`experiments.base_model.BaseConfig`; return the backbone's layout (None: unknown)."""
    check_number("base.pretrain_facts", base.pretrain_facts, 0, integer=True, example=300)
    check_number("base.pretrain_epochs", base.pretrain_epochs, 1, integer=True, example=25)
    check_number("base.pretrain_lr", base.pretrain_lr, 0, low_open=True, example=3e-3)
    check_number("base.batch_size", base.batch_size, 1, integer=True, example=16)
    return check_backbone(base.backbone)


def check_train(train: Any, methods: list[str], layout: ModelLayout | None, backbone: str) -> None:
    """Check a :class:`experiments.cell.TrainConfig`, the methods and their options, and the heads."""
    if not methods:
        raise UserError(f"methods is empty; choose from {available_methods()}")
    for method in methods:
        check_method(method)
    check_number("train.max_epochs", train.max_epochs, 1, integer=True, example=60)
    check_number("train.batch_size", train.batch_size, 1, integer=True, example=16)
    check_number("train.eval_every", train.eval_every, 1, integer=True, example=1)
    if train.accelerator not in ACCELERATORS:
        raise UserError(f"train.accelerator={train.accelerator!r} is unknown; choose from {ACCELERATORS}")
    for name, options in train.method_options.items():
        if name not in available_methods():
            raise UserError(
                f"train.method_options names the unknown method {name!r}; choose from {available_methods()}"
            )
        check_method_options(name, options)
    for spec in train.heads:
        check_head_fits(parse_head_spec(spec), layout, spec, backbone)
    if len(set(train.heads)) != len(train.heads):
        raise UserError(f"train.heads {train.heads} lists a head twice; keep each once")


def check_image(image: Any) -> None:
    """Check a :class:`experiments.image_labels.ImageStudyConfig` (nothing when it is disabled)."""
    from experiments.image_labels import IMAGE_METHODS

    if not image.enabled:
        return
    if not image.methods:
        raise UserError(
            f"image.methods is empty; choose from {list(IMAGE_METHODS)} or set image.enabled false"
        )
    for method in image.methods:
        if method not in IMAGE_METHODS:
            raise UserError(f"unknown image method {method!r}; choose from {list(IMAGE_METHODS)}")
    check_number("image.max_epochs", image.max_epochs, 1, integer=True, example=120)
    check_number("image.batch_size", image.batch_size, 1, integer=True, example=64)
    check_number("image.lr", image.lr, 0, low_open=True, example=3e-3)
    check_number("image.lora_r", image.lora_r, 1, integer=True, example=8)
    check_number("image.lora_alpha", image.lora_alpha, 0, low_open=True, example=16.0)
    check_number("image.eval_every", image.eval_every, 1, integer=True, example=5)
    if image.num_train is not None:
        from prompt_pool.datasets import load_digits_splits

        n = len(load_digits_splits()[1].y)
        check_number("image.num_train", image.num_train, 1, integer=True, example=300)
        if image.num_train > n:
            raise UserError(f"image.num_train={image.num_train} exceeds the {n} training images; use <= {n}")
