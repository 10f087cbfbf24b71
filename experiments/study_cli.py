"""The command line of a study: ``--config FILE [--quick] [--resume] [--overwrite] [--<field> value]``.

``--quick`` applies the config's ``quick_settings`` except the settings given on the command line;
``--resume`` / ``--overwrite`` (bare, or ``true`` / ``false``) are the run-folder words of every command
(:mod:`experiments.study_folder`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from decoding.errors import UserError, concise_parser_errors

STUDY_FLAGS = ("quick", "resume", "overwrite")


def explicit_keys(args: Sequence[str]) -> set[str]:
    """The dotted settings named on the command line (``--train.max_epochs 3`` -> ``train.max_epochs``)."""
    keys = {a[2:].split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}
    return keys - {"config", *STUDY_FLAGS}


def apply_quick(config: Any, quick: bool, keep: set[str] | frozenset[str] = frozenset()) -> Any:
    """Return ``config`` with its ``quick_settings`` applied, except the settings in ``keep``.

    Dotted keys reach nested dataclasses; a key in ``keep`` (or under one, e.g. ``train`` keeps
    ``train.max_epochs``) was set on the command line and wins over ``--quick``.
    """
    if not quick:
        return config
    for key, value in config.quick_settings.items():
        parts = key.split(".")
        if any(".".join(parts[:i]) in keep for i in range(1, len(parts) + 1)):
            continue
        *path, name = parts
        target = config
        for part in path:
            target = getattr(target, part, None)
        if target is None or not hasattr(target, name):
            owner = type(target).__name__ if target is not None else key
            raise UserError(
                f"quick_settings key {key!r} names no setting of {owner}; fix or remove it in the config file"
            )
        setattr(target, name, value)
    return config


def config_dict(config: Any) -> dict[str, Any]:
    """The settings of a dataclass config as JSON-ready data (without the quick overrides)."""
    data = dataclasses.asdict(config)
    data.pop("quick_settings", None)
    return data


def parse_study_args(
    config_cls: type, args: Sequence[str] | None, description: str, prog: str
) -> tuple[Any, dict[str, Any]]:
    """Parse ``--config FILE [--quick] [--resume] [--overwrite] [--<field> value]`` into ``config_cls``.

    ``--quick`` fills in the config's ``quick_settings`` except the settings given on the command line.
    Parse errors end with one line (exit 2).
    """
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    parser = concise_parser_errors(ArgumentParser(prog=prog, description=description), prog=prog)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the settings below")
    parser.add_class_arguments(config_cls, as_group=False)
    for flag, text in (
        ("quick", "apply the config's quick_settings (a run of minutes on a 2-core CPU)"),
        ("resume", "continue the run in the run folder (finished cells are kept)"),
        ("overwrite", "delete the run folder and start again"),
    ):
        parser.add_argument(f"--{flag}", action=ActionYesNo, nargs="?", default=False, help=text)
    ns = parser.parse_args(args)
    flags = {k: ns.pop(k) for k in ("quick", "resume", "overwrite")}
    ns.pop("config", None)
    config = parser.instantiate_classes(ns)
    cfg = config_cls(**{f.name: config[f.name] for f in dataclasses.fields(config_cls)})
    apply_quick(cfg, flags["quick"], explicit_keys(sys.argv[1:] if args is None else args))
    return cfg, flags
