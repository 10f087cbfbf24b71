"""The lm-evaluation-harness model ``memexp-decoding``: evaluate SLED, DoLa and DeRa heads with ``lm_eval``.

::

    memexp-lm-eval --model memexp-decoding --tasks memexp_factual_mc --limit 20 \\
        --model_args pretrained=smollm2:135m-instruct,head=sled,preset=truthfulqa-mc
    memexp-lm-eval --model memexp-decoding --tasks hellaswag --device cuda \\
        --model_args "pretrained=DIR,head=dola:dola_layers=0;2;relative_top=0"

Importing this module registers the model (``memexp-lm-eval`` is lm-eval's own command line after that
import, see :mod:`decoding.lm_eval_cli`); in Python, ``import decoding.lm_eval_model`` before
``lm_eval.simple_evaluate(model="memexp-decoding", ...)``.

Model args (``--model_args key=value,...``):

- ``pretrained``: any name :func:`decoding.models.load_causal_lm` takes (folder, hub id, ``tiny:llama``,
  ``smollm2:135m-instruct``, ``gguf:PATH``, a peft adapter folder).
- ``head``: a head option string (:mod:`decoding.head_spec`, e.g. ``sled``, ``dola:dola_layers=high``,
  ``dera:lam=2,head=sled``). lm-eval splits model args on commas, so write ``;`` between head options
  (``head=dola:dola_layers=0;2;relative_top=0``) or quote the value (``head='dola:dola_layers=0,2'``).
- ``preset``: the task defaults of unset head options (:mod:`decoding.presets`: ``generation``, the default,
  ``gsm8k``, ``strategyqa``, ``truthfulqa-mc``, ``factor``), as ``decoding score --task`` /
  ``decoding generate --task`` choose them.
- ``post_softmax``: sum log-probabilities of the head's scores (true) or the raw scores (false, the
  TruthfulQA reference); unset: the preset's choice, else true.
- ``ref_model``: DeRa's reference model name, or ``adapters-off`` for a peft adapter ``pretrained``.
- ``dtype`` (``auto`` = the checkpoint's), ``device`` (CPU when CUDA is asked for but absent),
  ``batch_size`` (prompts per generation batch, windows per rolling batch; ``auto`` = 8),
  ``max_length`` (default: the model's position limit), ``max_gen_toks`` (default 256),
  ``separate_tokenization`` (tokenise context and continuation apart).

Requests run through the project's code paths:

- ``loglikelihood``: the continuations of one context are scored together by
  :func:`decoding.mc.score_encoded` after :func:`decoding.mc.encode_choice`'s joint tokenisation, the
  context's KV cache shared, exactly as ``decoding score`` scores the answers of one question.
  ``is_greedy``: every continuation token is the argmax of the head's scores.
- ``loglikelihood_rolling``: lm-eval's disjoint windows of ``max_length`` tokens after a BOS (else EOS)
  token, through the head; refused with ``post_softmax=false`` (raw scores are not log-probabilities).
- ``generate_until``: :func:`decoding.generate.generate` with the head, in batches of ``batch_size``
  requests with equal ``gen_kwargs`` (``until``, ``max_gen_toks``, ``do_sample``, ``temperature``,
  ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``). Prompts are not truncated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import torch

from decoding.errors import UserError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "decoding.lm_eval_model needs lm-evaluation-harness; install it with pip install 'memexp[lmeval]'"
    ) from err

log = logging.getLogger(__name__)

MODEL_NAME = "memexp-decoding"
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_GEN_KEYS = (
    "until",
    "max_gen_toks",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
)


def _flag(name: str, value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("none", ""):
        return None
    if text not in _BOOLS:
        raise UserError(f"model arg {name}={value!r} must be true or false")
    return _BOOLS[text]


def build_head(spec: str, preset: str = "generation"):
    """The head of option string ``spec`` (``;`` may stand for ``,``) on ``preset``'s defaults."""
    from decoding.head_spec import parse_head_options
    from decoding.presets import TASKS, head_for_task

    if preset not in TASKS:
        raise UserError(f"model arg preset={preset!r} is unknown; use one of {', '.join(TASKS)}")
    name, opts = parse_head_options(str(spec).replace(";", ","))
    inner = (opts.pop("head", None) or "greedy") if name == "dera" else name
    return head_for_task(name, preset, inner=inner, **opts)


@register_model(MODEL_NAME)
class DecodingLM(LM):
    """An HF causal LM whose next-token scores come from a decoding head (model args: module docstring)."""

    def __init__(
        self,
        pretrained: str | None = None,
        head: str = "greedy",
        preset: str = "generation",
        post_softmax: bool | str | None = None,
        ref_model: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 8,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        separate_tokenization: bool | str = False,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise UserError(
                f"unknown model arg(s) {', '.join(sorted(unknown))} for {MODEL_NAME}; known: pretrained, "
                "head, preset, post_softmax, ref_model, dtype, device, batch_size, max_length, max_gen_toks, "
                "separate_tokenization"
            )
        if not pretrained:
            raise UserError(f"{MODEL_NAME} needs pretrained=NAME in --model_args, e.g. pretrained=tiny:llama")
        from decoding.cli import load_models
        from decoding.presets import task_defaults

        self.head_spec = str(head)
        self.head = build_head(self.head_spec, preset)
        post = _flag("post_softmax", post_softmax)
        self.post_softmax = task_defaults(preset).get("post_softmax", True) if post is None else post
        if self.head.uses_ref and not ref_model:
            raise UserError(
                f"head={self.head_spec!r} needs ref_model=NAME (the reference model) or "
                "ref_model=adapters-off in --model_args"
            )
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s asked for but CUDA is not available; running on the CPU", device)
            device = None
        dtype = None if dtype in (None, "auto") else str(dtype)
        self.model, self.tokenizer, self.ref, self.ref_tokenizer = load_models(
            str(pretrained), self.head, self.head_spec, ref_model and str(ref_model), dtype, device
        )
        self._device = next(self.model.parameters()).device
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be >= 1")
        self.separate_tokenization = bool(_flag("separate_tokenization", separate_tokenization))
        self.max_gen_toks = int(max_gen_toks)
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.max_length = int(max_length or limit or 2048)
        self._warned_truncation = False

    # -- tokens ---------------------------------------------------------------------------------------

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: BOS, else EOS (as lm-eval's HF model)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """``(ids, n_context)``: ``encode_choice``'s joint tokenisation; lm-eval's whitespace, length rules.

        Trailing whitespace of the context moves to the continuation; an empty context becomes the
        BOS/EOS token; a sequence longer than ``max_length`` loses its oldest context tokens.
        """
        from decoding.mc import encode_choice

        if not context:
            ids = [self.prefix_token_id] + self.tokenizer(continuation, add_special_tokens=False).input_ids
            k = 1
        else:
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            ids, k = encode_choice(self.tokenizer, context, continuation, self.separate_tokenization)
        if len(ids) > self.max_length:
            if not self._warned_truncation:
                log.warning(
                    "a request of %d tokens loses its oldest tokens to fit max_length=%d (set max_length= "
                    "in --model_args to change it); further truncations are not reported",
                    len(ids),
                    self.max_length,
                )
                self._warned_truncation = True
            cut = len(ids) - self.max_length
            ids, k = ids[cut:], max(1, k - cut)
        return ids, k

    def _score(self, enc: Sequence[tuple[list[int], int]]):
        from decoding.mc import score_encoded

        return score_encoded(
            self.model,
            enc,
            self.head,
            self.post_softmax,
            self.ref,
            pad_token_id=self.tokenizer.pad_token_id or 0,
        )

    # -- lm-eval requests -------------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum of the head's scores of the continuation, is_greedy)`` per ``(context, continuation)``."""
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.args[0], []).append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for context, rows in tqdm(groups.items(), desc="loglikelihood", disable=disable_tqdm):
            res = self._score([self._encode_pair(context, requests[i].args[1]) for i in rows])
            for j, i in enumerate(rows):
                out[i] = (float(res.scores[j]), bool(res.greedy[j]))
                self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The summed log-probability of each whole text, in disjoint windows of ``max_length`` tokens."""
        from tqdm.auto import tqdm

        if not self.post_softmax:
            raise UserError(
                "loglikelihood_rolling (perplexity tasks) needs log-probabilities, but post_softmax=false "
                "sums raw head scores; drop post_softmax=false or use a preset other than truthfulqa-mc"
            )
        out = []
        for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1)
            enc = [(ctx + pred, len(ctx)) for ctx, pred in map(make_disjoint_window, windows)]
            total = 0.0
            for start in range(0, len(enc), self.batch_size):
                total += float(self._score(enc[start : start + self.batch_size]).scores.sum())
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    def _gen_options(self, gen_kwargs: dict) -> dict:
        """``decoding.generate`` keywords from lm-eval's ``gen_kwargs`` (unknown keys are refused)."""
        kw = dict(gen_kwargs or {})
        unknown = sorted(set(kw) - set(_GEN_KEYS))
        if unknown:
            raise UserError(
                f"gen_kwargs {', '.join(unknown)} are not supported by {MODEL_NAME}; "
                f"supported: {', '.join(_GEN_KEYS)}"
            )
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kw.get("temperature", 1.0))
        do_sample = bool(kw.get("do_sample", False)) and temperature > 0  # temperature 0 = greedy, as HF
        return {
            "stop_strings": until,
            "max_new_tokens": int(kw.get("max_gen_toks", self.max_gen_toks)),
            "do_sample": do_sample,
            "temperature": temperature if do_sample else 1.0,
            "top_k": int(kw.get("top_k") or 0),
            "top_p": float(kw.get("top_p") or 1.0),
            "repetition_penalty": float(kw.get("repetition_penalty", 1.0)),
            "seed": kw.get("seed"),
        }

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations generated with the head, cut before the first ``until`` string."""
        from tqdm.auto import tqdm

        from decoding.generate import generate

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for rows in groups.values():
            options = self._gen_options(requests[rows[0]].args[1])
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                res = generate(
                    self.model,
                    self.tokenizer,
                    [requests[i].args[0] for i in batch],
                    head=self.head,
                    ref_model=self.ref,
                    ref_tokenizer=self.ref_tokenizer,
                    **options,
                )
                for i, text in zip(batch, res.texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return out

    # -- chat templates -------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return (self.tokenizer.chat_template or "") if chat_template else ""

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )
