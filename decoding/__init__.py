"""Decoding heads (greedy, DoLa, SLED, DeRa) over per-layer logits of HF causal LMs."""

from decoding.dera import DeRa
from decoding.dola import DoLa
from decoding.generate import GenerationOutput, generate, hf_custom_generate
from decoding.greedy import Greedy
from decoding.head import HEAD_NAMES, Head, make_head
from decoding.layers import LayerLogits, layer_logits, layer_logits_at
from decoding.mc import evaluate_factor, evaluate_truthfulqa, score_continuations
from decoding.models import check_tokenizer_fits, load_causal_lm, load_tokenizer, resolve_model_path
from decoding.presets import head_for_task
from decoding.sled import SLED
from decoding.tiny import build_tiny_lm

__all__ = [
    "HEAD_NAMES",
    "SLED",
    "DeRa",
    "DoLa",
    "GenerationOutput",
    "Greedy",
    "Head",
    "LayerLogits",
    "build_tiny_lm",
    "check_tokenizer_fits",
    "evaluate_factor",
    "evaluate_truthfulqa",
    "generate",
    "head_for_task",
    "hf_custom_generate",
    "layer_logits",
    "layer_logits_at",
    "load_causal_lm",
    "load_tokenizer",
    "make_head",
    "resolve_model_path",
    "score_continuations",
]
