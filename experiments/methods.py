"""Memorisation methods by name: one registry that the studies build their Lightning modules from.

``full`` and ``lora`` are :class:`memexp.fact_tuning.FactTuning`; ``mome`` is the memory-expert module
(``memexp.mome.MoMETuning``), imported only when asked for; ``mome_gate`` is the same module under its own
name, so that a study can run it beside ``mome`` with other options (the fact gate on: ``mome.gate``).
A new method is one :func:`register_method` call::

    register_method("mome", lambda backbone, seed, options: MoMETuning(backbone, seed=seed, **options))

Every registered module evaluates facts through memexp's one path (:mod:`memexp.fact_eval`); the decoding
heads of a study reach it as the module's ``eval_heads`` option (:func:`build_method`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import lightning as L

from decoding.errors import UserError

Builder = Callable[[str, int, dict[str, Any]], L.LightningModule]

_REGISTRY: dict[str, Builder] = {}
_OPTIONS: dict[str, Callable[[], Callable]] = {}  # name -> (lazily) the callable whose keywords are options
_SET_BY_STUDY = {"self", "backbone", "seed", "method", "eval_heads"}


def register_method(name: str, builder: Builder, options_of: Callable[[], Callable] | None = None) -> None:
    """Register ``builder(backbone, seed, options) -> LightningModule`` under ``name``.

    ``options_of()`` returns the class (or function) whose keyword arguments are the method's options,
    so that :func:`check_method_options` can refuse a misspelt option before any work starts.
    """
    _REGISTRY[name] = builder
    if options_of is not None:
        _OPTIONS[name] = options_of


def available_methods() -> list[str]:
    """Names accepted by :func:`build_method`."""
    return sorted(_REGISTRY)


def check_method(name: str) -> str:
    """Return ``name`` or raise a clear error when no such method is registered."""
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; choose from {available_methods()}")
    return name


def check_method_options(name: str, options: dict[str, Any]) -> None:
    """Refuse unknown option names and non-positive learning rates / ranks of method ``name`` (UserError)."""
    check_method(name)
    if not isinstance(options, dict):
        raise UserError(f"train.method_options.{name} must be a mapping of options, got {options!r}")
    if name in _OPTIONS:
        allowed = set(inspect.signature(_OPTIONS[name]()).parameters) - _SET_BY_STUDY
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise UserError(
                f"train.method_options.{name} has unknown option(s) {unknown}; allowed: {sorted(allowed)}"
            )
    for key in ("lr", "router_lr"):
        value = options.get(key)
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UserError(f"train.method_options.{name}.{key}={value!r} must be a number > 0, e.g. 1e-3")
    rank = options.get("lora_r")
    if rank is not None and not (isinstance(rank, int) and rank >= 1):
        raise UserError(f"train.method_options.{name}.lora_r={rank!r} must be a whole number >= 1, e.g. 8")
    if _REGISTRY[name] is _mome and isinstance(options.get("mome"), dict):
        from memexp.mome import MoMEConfig

        try:
            MoMEConfig(**options["mome"])
        except (TypeError, ValueError) as err:
            raise UserError(f"train.method_options.mome.mome: {err}") from err


def build_method(
    name: str,
    backbone: str,
    seed: int,
    options: dict[str, Any] | None = None,
    eval_heads: list[str] | None = None,
) -> L.LightningModule:
    """Build the Lightning module of method ``name`` on ``backbone`` with method ``options``.

    ``eval_heads`` (decoding head specs) are passed as the module's ``eval_heads`` option when given.
    """
    options = dict(options or {})
    if eval_heads:
        options["eval_heads"] = list(eval_heads)
    return _REGISTRY[check_method(name)](backbone, seed, options)


def _fact_tuning(method: str) -> Builder:
    def build(backbone: str, seed: int, options: dict[str, Any]) -> L.LightningModule:
        from memexp.fact_tuning import FactTuning

        return FactTuning(backbone=backbone, method=method, seed=seed, **options)

    return build


def _mome(backbone: str, seed: int, options: dict[str, Any]) -> L.LightningModule:
    from memexp.mome import MoMEConfig
    from memexp.mome.tuning import MoMETuning

    options = dict(options)
    if isinstance(options.get("mome"), dict):
        options["mome"] = MoMEConfig(**options["mome"])
    return MoMETuning(backbone=backbone, seed=seed, **options)


def _fact_tuning_class():
    from memexp.fact_tuning import FactTuning

    return FactTuning


def _mome_class():
    from memexp.mome.tuning import MoMETuning

    return MoMETuning


register_method("full", _fact_tuning("full"), _fact_tuning_class)
register_method("lora", _fact_tuning("lora"), _fact_tuning_class)
register_method("mome", _mome, _mome_class)
register_method("mome_gate", _mome, _mome_class)
