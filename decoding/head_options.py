"""The registry of head classes and their constructor options, read from the source without importing it.

A head's options are its ``__init__`` parameters: name, type hint, default, and the help text of the
class docstring's ``Args:`` section. :func:`head_options` reads them with :mod:`ast` from the head's
module file, so the command line (:mod:`decoding.cli_parser`) and the option strings
(:mod:`decoding.head_spec`) know every option without importing torch. Adding an option to a head's
``__init__`` (typed, documented under ``Args:``) is all it takes for ``--head NAME:option=...`` and the
``decoding`` command's ``--option`` flag; ``tests/decoding/test_head_options.py`` checks that what is
read here equals the imported class's ``inspect.signature`` and ``typing.get_type_hints``.

The hints a head may use are the names in :data:`HINT_NAMES` joined by ``|`` and ``Sequence[int]``;
another name raises ``TypeError`` naming it (extend :data:`HINT_NAMES`).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEAD_CLASSES = {  # name -> (module, class): the heads' one registry
    "greedy": ("decoding.greedy", "Greedy"),
    "dola": ("decoding.dola", "DoLa"),
    "sled": ("decoding.sled", "SLED"),
    "dera": ("decoding.dera", "DeRa"),
}


class Head:
    """Stands for :class:`decoding.head.Head` in hints read from source (same name, no torch)."""


HINT_NAMES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "Sequence": Sequence,
    "Head": Head,
}


def hint_members(hint: Any) -> tuple[Any, ...]:
    """The members of a union hint (``int | None`` -> ``(int, NoneType)``); ``(hint,)`` otherwise."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


def is_sequence_hint(hint: Any) -> bool:
    """Whether ``hint`` is a sequence (``Sequence[int]``, ``list[int]``, ``tuple[int, ...]``)."""
    return typing.get_origin(hint) in (Sequence, list, tuple)


@dataclass(frozen=True)
class HeadOption:
    """One constructor option of a head.

    Attributes:
        name: the parameter name (the key of ``--head NAME:name=value``).
        hint: the type hint, with :class:`Head` for the real ``Head`` class.
        default: the parameter's default (``inspect.Parameter.empty`` when it has none).
        help: its text under the class docstring's ``Args:`` ("" when undocumented).
    """

    name: str
    hint: Any
    default: Any
    help: str


def _hint(node: ast.expr, where: str) -> Any:
    """The type of an annotation node: names of :data:`HINT_NAMES`, ``None``, ``X | Y``, ``Sequence[int]``."""
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _hint(ast.parse(node.value, mode="eval").body, where)
    if isinstance(node, ast.Name) and node.id in HINT_NAMES:
        return HINT_NAMES[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _hint(node.left, where) | _hint(node.right, where)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Sequence":
        return Sequence[_hint(node.slice, where)]
    raise TypeError(
        f"{where}: the hint {ast.unparse(node)!r} is not one decoding.head_options reads; "
        f"use {', '.join(HINT_NAMES)}, None, X | Y or Sequence[int] (or extend HINT_NAMES)"
    )


def docstring_args(doc: str) -> dict[str, str]:
    """``{name: text}`` of a Google-style docstring's ``Args:`` section (continuation lines joined)."""
    args: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    if "Args:" not in (line.strip() for line in lines):
        return args
    start = [line.strip() for line in lines].index("Args:") + 1
    indent, name = None, None
    for line in lines[start:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        key, sep, text = line.strip().partition(":")
        if depth == indent and sep and key.isidentifier():
            name, args[key] = key, text.strip()
        elif name is not None:
            args[name] = f"{args[name]} {line.strip()}"
    return args


@functools.cache
def head_options(name: str) -> tuple[HeadOption, ...]:
    """The constructor options of head ``name`` (a key of :data:`HEAD_CLASSES`), in signature order."""
    module, cls_name = HEAD_CLASSES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the source of {module} (head {name!r})")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return ()
    docs = docstring_args(ast.get_docstring(cls) or "")
    params = [*init.args.posonlyargs, *init.args.args][1:]  # without self
    defaults = [inspect.Parameter.empty] * (len(params) - len(init.args.defaults))
    defaults += [ast.literal_eval(d) for d in init.args.defaults]
    pairs = list(zip(params, defaults))
    pairs += [
        (p, inspect.Parameter.empty if d is None else ast.literal_eval(d))
        for p, d in zip(init.args.kwonlyargs, init.args.kw_defaults)
    ]
    where = f"{cls_name}.__init__"
    missing = [p.arg for p, _ in pairs if p.annotation is None]
    if missing:
        raise TypeError(f"{where}: parameters {missing} have no type hint; every head option needs one")
    return tuple(
        HeadOption(p.arg, _hint(p.annotation, f"{where}({p.arg})"), d, docs.get(p.arg, "")) for p, d in pairs
    )
