"""Decoding heads (greedy, DoLa, SLED, DeRa) over per-layer logits of HF causal LMs.

The names below are imported on first use (PEP 562), so ``import decoding`` -- and the ``decoding``
command line's ``--help`` -- does not pay for torch and transformers.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from decoding.lazy_exports import lazy_exports

_HOME = {
    "HEAD_NAMES": "decoding.head_spec",
    "SLED": "decoding.sled",
    "DeRa": "decoding.dera",
    "DoLa": "decoding.dola",
    "DecodeSettings": "decoding.generate",
    "GenerationOutput": "decoding.generate",
    "Greedy": "decoding.greedy",
    "Head": "decoding.head",
    "LayerLogits": "decoding.layers",
    "build_tiny_lm": "decoding.tiny",
    "check_tokenizer_fits": "decoding.models",
    "evaluate_factor": "decoding.mc",
    "evaluate_truthfulqa": "decoding.mc",
    "generate": "decoding.generate",
    "head_for_task": "decoding.presets",
    "custom_generate_dir": "decoding.hf_generate",
    "hf_custom_generate": "decoding.hf_generate",
    "layer_logits": "decoding.layers",
    "layer_logits_at": "decoding.layers",
    "load_causal_lm": "decoding.models",
    "load_tokenizer": "decoding.models",
    "make_head": "decoding.head_spec",
    "parse_head_spec": "decoding.head_spec",
    "resolve_model_path": "decoding.models",
    "score_continuations": "decoding.mc",
}

__all__ = sorted(_HOME)


__getattr__, __dir__ = lazy_exports(__name__, _HOME)


class _Package(types.ModuleType):
    """Keeps ``decoding.generate`` the function (as the eager imports did), not the submodule."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
