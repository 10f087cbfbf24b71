"""Decoding heads inside HF's ``model.generate``: a ``custom_generate`` callable and a Hub-style folder.

Three ways in, all running :func:`decoding.generate.decode` on HF's prepared inputs::

    from decoding.hf_generate import custom_generate_dir, generate, hf_custom_generate

    generate(model, ids, head="sled", max_new_tokens=32, stop_strings=["\\n"], tokenizer=tok, streamer=s)
    model.generate(ids, custom_generate=custom_generate_dir(), trust_remote_code=True, head="sled")
    model.generate(ids, custom_generate=hf_custom_generate, head=SLED(), max_new_tokens=32)

``head`` is a :class:`~decoding.head.Head` or an option string (``"dola:dola_layers=low"``);
``ref_model`` is DeRa's reference (a model or a context-manager factory such as
``model.disable_adapter``).

What HF 5.x hands a ``custom_generate`` callable (``GenerationMixin.generate``, transformers 5.24):

- ``logits_processor``: its processors (repetition penalty, bad words, min length...) **and**, with
  ``do_sample=True``, the warpers (temperature, top-k -- 50 unless set --, top-p, min-p...). They run
  once, after the head; nothing is warped a second time, so sampling equals HF's own sampling
  (same tokens for the same ``torch.manual_seed`` with the greedy head, tested).
- ``stopping_criteria``: max length, EOS, ``max_time``, and ``stop_strings`` when a tokenizer came
  with them. They end rows exactly as in HF's sampling loop.
- not the ``streamer`` (HF puts the prompt into it, then never passes it on) and not the tokenizer
  (so ``stop_strings=`` fails in HF's own preparation). :func:`generate` -- also the entry of the
  folder -- closes over the streamer and turns ``stop_strings`` + ``tokenizer`` into HF's
  ``StopStringCriteria`` itself, so both work as with HF's plain ``generate``.

The folder (:func:`custom_generate_dir`) is laid out like a Hub repository:
``custom_generate/generate.py`` re-exports :func:`generate`. HF loads it from a local path only with
``trust_remote_code=True`` (it executes the file) and needs this package importable.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from decoding.generate import DecodeSettings, _ref_pass, decode
from decoding.head import Head


def custom_generate_dir() -> str:
    """The folder to pass as ``model.generate(custom_generate=..., trust_remote_code=True)``."""
    return str(Path(__file__).resolve().parent / "hub")


def _as_head(head: Head | str | None) -> Head | None:
    if isinstance(head, str):
        from decoding.head_spec import parse_head_spec

        return parse_head_spec(head)
    return head


def hf_custom_generate(
    model: nn.Module,
    input_ids: Tensor,
    logits_processor=None,
    stopping_criteria=None,
    generation_config=None,
    head: Head | str | None = None,
    ref_model=None,
    synced_gpus: bool = False,
    streamer=None,
    **model_kwargs,
) -> Tensor:
    """The decoding loop for ``model.generate(ids, custom_generate=hf_custom_generate, head=...)``.

    Args:
        model: the HF causal LM (the aligned model for DeRa).
        input_ids: ``(B, S)`` prompt ids prepared by HF (left-padded for a batch).
        logits_processor: HF's prepared list; it runs after the head and holds the sampling warpers.
        stopping_criteria: HF's prepared list (max length, EOS, max_time, stop strings).
        generation_config: HF's prepared config (``do_sample``, ``max_new_tokens``, EOS and pad ids).
        head: a head or an option string; greedy when None.
        ref_model: DeRa's reference model or context-manager factory.
        synced_gpus: unsupported (multi-GPU ZeRO-3 generation); refused when True.
        streamer: gets ``put(new ids (B,))`` per step and ``end()``; its prompt was put by the caller.
        model_kwargs: HF's model inputs; only ``attention_mask`` is read (HF drops an all-ones mask).

    Returns:
        ``(B, S + T)`` ids: the prompt, then the new tokens (pad after a row stopped), as HF.
    """
    if synced_gpus:
        raise ValueError("synced_gpus=True is not supported by the decoding heads; generate on one device")
    cfg = generation_config
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask
    ref = _ref_pass(model, ref_model) if ref_model is not None else None
    eos = cfg.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    max_new = cfg.max_new_tokens or max(0, (cfg.max_length or 20) - input_ids.shape[1])
    settings = DecodeSettings(
        head=_as_head(head),
        max_new_tokens=max_new,
        eos_token_ids=tuple(eos_ids),
        pad_token_id=pad,
        do_sample=bool(cfg.do_sample),
    )
    hooks = {"processor": logits_processor, "criteria": stopping_criteria, "streamer": streamer}
    new, _ = decode(model, input_ids, mask, settings, ref=ref, **hooks)
    return torch.cat([input_ids, new], 1)


def generate(model: nn.Module, *args, head: Head | str | None = None, ref_model=None, **kwargs) -> Tensor:
    """HF's ``generate`` with a decoding head; takes every argument HF's ``generate`` takes.

    ``streamer``, ``stop_strings`` (with ``tokenizer=``, as HF asks) and ``max_time`` work as with
    HF's plain ``generate``. This is the ``generate`` of the folder :func:`custom_generate_dir`.
    """
    from transformers import GenerationMixin, StoppingCriteriaList, StopStringCriteria

    streamer = kwargs.pop("streamer", None)
    tokenizer = kwargs.pop("tokenizer", None)
    stop_strings = kwargs.pop("stop_strings", None)
    cfg = kwargs.get("generation_config")
    if cfg is not None and getattr(cfg, "stop_strings", None):
        stop_strings = stop_strings or cfg.stop_strings
        kwargs["generation_config"] = cfg = copy.deepcopy(cfg)
        cfg.stop_strings = None
    criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
    if stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings need the model's tokenizer: pass tokenizer=..., as to HF's")
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))

    def run(
        model,
        input_ids,
        logits_processor=None,
        stopping_criteria=None,
        generation_config=None,
        head=None,
        ref_model=None,
        synced_gpus=False,
        **model_kwargs,
    ):
        return hf_custom_generate(
            model,
            input_ids,
            logits_processor,
            stopping_criteria,
            generation_config,
            head=head,
            ref_model=ref_model,
            synced_gpus=synced_gpus,
            streamer=streamer,
            **model_kwargs,
        )

    return GenerationMixin.generate(
        model,
        *args,
        custom_generate=run,
        stopping_criteria=criteria,
        streamer=streamer,  # HF puts the prompt into it; ``run`` streams the new tokens
        head=head,
        ref_model=ref_model,
        **kwargs,
    )
