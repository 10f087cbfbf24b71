"""Decoding heads (greedy, DoLa, SLED, DeRa) over per-layer logits of HF causal LMs."""

from decoding.models import check_tokenizer_fits, load_causal_lm, load_tokenizer, resolve_model_path
from decoding.tiny import build_tiny_lm

__all__ = ["build_tiny_lm", "check_tokenizer_fits", "load_causal_lm", "load_tokenizer", "resolve_model_path"]
