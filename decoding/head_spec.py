"""Head option strings, the one place where text becomes a decoding head: ``NAME[:key=value,...]``.

::

    sled                                  greedy
    sled:evolution_rate=0.5,op_T=2        dola:dola_layers=low
    dola:dola_layers=0,2,relative_top=0   dera:lam=2,head=sled,evolution_scale=5

Each value is typed by the head's constructor signature (``int``, ``float``, ``bool``, layer-id lists,
``None``); an item without ``=`` continues the previous value, so lists need no quoting
(``dola_layers=0,2``). DeRa's options are ``lam`` and ``head`` (the inner head's name); any other key
goes to the inner head. Bad text raises :class:`~decoding.errors.UserError` naming the value and the fix.

:func:`check_head_fits` checks a head against a model's layer count and vocabulary
(:func:`model_layout` reads them from the model's config alone, before any weights are loaded).

Nothing here imports torch at module level, so command lines can parse and validate options quickly.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from decoding.errors import UserError
from decoding.head_options import HEAD_CLASSES, head_options, hint_members, is_sequence_hint

if TYPE_CHECKING:
    from decoding.head import Head

HEAD_NAMES = tuple(HEAD_CLASSES)
_NONE = ("none", "null")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def head_class(name: str) -> type:
    """The head class registered under ``name`` (imports it, and torch); UserError for an unknown name."""
    if name not in HEAD_CLASSES:
        raise UserError(f"unknown head {name!r}; known heads: {', '.join(HEAD_NAMES)}")
    module, cls = HEAD_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def head_parameters(name: str) -> dict[str, Any]:
    """``{option: type hint}`` of head ``name``'s constructor, read from its source (no torch import).

    Raises:
        UserError: an unknown head name (the known ones are listed).
    """
    if name not in HEAD_CLASSES:
        raise UserError(f"unknown head {name!r}; known heads: {', '.join(HEAD_NAMES)}")
    return {o.name: o.hint for o in head_options(name)}


def _describe(hint: Any) -> str:
    words = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}
    parts = []
    for t in hint_members(hint):
        if t is type(None):
            parts.append("none")
        elif is_sequence_hint(t):
            parts.append("comma-separated layer ids like 0,2")
        elif isinstance(t, type) and t.__name__ == "Head":
            parts.append(f"a head name ({', '.join(n for n in HEAD_NAMES if n != 'dera')})")
        else:
            parts.append(words.get(t, getattr(t, "__name__", str(t))))
    return " or ".join(parts)


def convert_option(key: str, raw: str, hint: Any, spec: str) -> Any:
    """Type ``raw`` by ``hint`` (a constructor annotation); UserError naming the value otherwise."""
    members = hint_members(hint)
    text = raw.strip()
    if type(None) in members and text.lower() in _NONE:
        return None
    for t in sorted(members, key=lambda t: [bool, int, float].index(t) if t in (bool, int, float) else 3):
        if t is bool and text.lower() in _BOOLS:
            return _BOOLS[text.lower()]
        if t is int:
            try:
                return int(text)
            except ValueError:
                continue
        if t is float:
            try:
                value = float(text)
            except ValueError:
                continue
            if not math.isfinite(value):
                raise UserError(f"head option {key}={raw!r} in {spec!r} must be a finite number")
            return value
        if is_sequence_hint(t):
            try:
                return [int(i) for i in text.split(",")]
            except ValueError:
                continue
        if isinstance(t, type) and t.__name__ == "Head" and text in HEAD_NAMES and text != "dera":
            return text
    if str in members:
        return text
    raise UserError(f"head option {key}={raw!r} in {spec!r} must be {_describe(hint)}")


def _split_items(spec: str, args: str) -> list[tuple[str, str]]:
    """``a=1,b=2,3`` -> ``[("a", "1"), ("b", "2,3")]`` (an item without ``=`` continues the value)."""
    items: list[tuple[str, str]] = []
    for item in args.split(","):
        key, sep, raw = item.partition("=")
        if sep:
            if not key.strip():
                raise UserError(f"head option {item!r} in {spec!r} has no name; write key=value")
            items.append((key.strip(), raw))
        elif items and item.strip():
            items[-1] = (items[-1][0], f"{items[-1][1]},{item}")
        elif item.strip():
            raise UserError(f"head option {item!r} in {spec!r} must look like key=value, e.g. 'dera:lam=2'")
    return items


def parse_head_options(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:key=value,...]`` -> ``(name, typed options)``; for ``dera`` ``head`` stays a name."""
    name, _, args = spec.strip().partition(":")
    own = head_parameters(name)
    inner_name = "greedy"
    items = _split_items(spec, args)
    if name == "dera":
        inner_name = next((raw.strip() for key, raw in items if key == "head"), "greedy")
        if inner_name not in HEAD_NAMES or inner_name == "dera":
            known = ", ".join(n for n in HEAD_NAMES if n != "dera")
            raise UserError(
                f"head option head={inner_name!r} in {spec!r}: DeRa's inner head is one of {known}"
            )
    inner = head_parameters(inner_name) if name == "dera" else {}
    options: dict[str, Any] = {}
    for key, raw in items:
        hint = own.get(key, inner.get(key))
        if hint is None:
            known = sorted(set(own) | set(inner)) or ["(none)"]
            raise UserError(
                f"unknown option {key!r} for head {name!r} in {spec!r}; options: {', '.join(known)}"
            )
        if key in options:
            raise UserError(f"head option {key!r} is given twice in {spec!r}; keep one")
        options[key] = convert_option(key, raw, hint, spec)
    return name, options


def make_head(name: str, **options) -> Head:
    """Build a head by name: ``greedy``, ``dola``, ``sled`` or ``dera`` (options = its constructor's).

    Raises:
        UserError: unknown name (the known ones are listed), or options the head refuses.
    """
    cls = head_class(name)
    try:
        return cls(**options)
    except TypeError as err:  # an unknown keyword
        raise UserError(f"head {name!r}: {err}; see help({cls.__name__})") from err
    except ValueError as err:
        raise UserError(f"head {name!r}: {err}") from err


def build_head(name: str, options: dict[str, Any] | None = None):
    """Build head ``name`` from typed ``options`` (for ``dera``: ``lam``, ``head`` and the inner head's)."""
    options = dict(options or {})
    if name == "dera":
        own = head_parameters("dera")
        inner = options.pop("head", None)
        inner_opts = {k: options.pop(k) for k in list(options) if k not in own}
        if isinstance(inner, str) or inner_opts:
            inner = make_head(inner if isinstance(inner, str) else "greedy", **inner_opts)
        return make_head("dera", head=inner, **options)
    return make_head(name, **options)


def parse_head_spec(spec: str):
    """Build a decoding head from ``NAME[:key=value,...]`` (see the module docstring)."""
    return build_head(*parse_head_options(spec))


@dataclass(frozen=True)
class ModelLayout:
    """What a head needs to know about a model: blocks N, tied embeddings, vocabulary size."""

    num_layers: int
    tied: bool
    vocab: int | None


def model_layout(name_or_path: str) -> ModelLayout | None:
    """The layout of a model from its name (``tiny:``) or its ``config.json``; None when not readable.

    No weights are loaded and no ``tiny:`` model is built.
    """
    import json
    from pathlib import Path

    name = str(name_or_path)
    if name.startswith("tiny:"):
        from decoding.tiny import parse_tiny_name

        try:
            cfg = parse_tiny_name(name)
        except ValueError as err:
            raise UserError(f"model {name!r}: {err}") from err
        return ModelLayout(cfg.layers, cfg.arch == "gpt2", cfg.vocab)
    folder = Path(name).expanduser()
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        return model_layout(base) if base else None
    config = folder / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    data = data.get("text_config", data)
    n = data.get("num_hidden_layers", data.get("n_layer"))
    if n is None:
        return None
    return ModelLayout(int(n), bool(data.get("tie_word_embeddings", True)), data.get("vocab_size"))


def check_head_fits(head, layout: ModelLayout | None, spec: str, model: str) -> None:
    """Refuse a head whose layer ids or ``evolution_scale`` do not fit the model (UserError)."""
    if layout is None:
        return
    try:
        head.required_layers(layout.num_layers, layout.tied)
    except ValueError as err:
        raise UserError(
            f"head {spec!r} does not fit model {model!r} ({layout.num_layers} blocks): {err}"
        ) from err
    for part in (head, getattr(head, "head", None)):
        k = getattr(part, "evolution_scale", None)
        if k is not None and layout.vocab is not None and k > layout.vocab:
            raise UserError(
                f"head {spec!r}: evolution_scale={k} exceeds the vocabulary size {layout.vocab} of "
                f"{model!r}; use evolution_scale <= {layout.vocab}"
            )
