"""Batched generation with any head: KV cache per pass, left padding, stop strings, penalties, sampling.

One step (docs/algorithms/decoding.md: 'SLED', 'DoLa', 'DeRa')::

    aligned pass:  model(new tokens, cache_a) -> LayerLogits (last position, stacked lm_head GEMM)
    [ref pass]:    ref_model(new tokens, cache_r) -> LayerLogits            (DeRa only)
    scores = head(x, ref)                    # (B, V)
    scores = repetition_penalty(scores)      # CTRL, after the head, over prompt + generated ids
    next   = argmax(scores) | sample(temperature -> top_k -> top_p)

Each pass sees the prompt once (prefill) and then one token per step. Prompts are left-padded and
every row gets its own position ids, so row r of a batch gives the tokens of the same prompt alone
(up to floating-point rounding of near-ties). The repetition penalty ignores pad positions (HF's
processor does not, which makes its batched output differ from batch 1).

DeRa's reference pass is either a second model (``ref_model=other``; its vocabulary must match,
padded lm_head rows are cut off) or a context-manager factory that switches the adapters off, e.g.
``ref_model=peft_model.disable_adapter``: one backbone, two KV caches.

Entry points: :func:`generate` (prompts in, ``GenerationOutput(token_ids, texts)`` out) and, in
:mod:`decoding.hf_generate`, HF's ``model.generate(..., custom_generate=...)`` (the same loop, fed by
HF's prepared processors and stopping criteria).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from decoding.greedy import Greedy
from decoding.head import Head
from decoding.layers import LayerLogits, layer_logits, model_info
from decoding.models import as_causal_lm


@dataclass
class GenerationOutput:
    """New token ids (EOS included when produced) and decoded texts (cut before a stop string)."""

    token_ids: list[list[int]]
    texts: list[str]


class _Pass:
    """One model pass with its own KV cache (the aligned model, or the reference)."""

    def __init__(self, model: nn.Module, context: Callable | None = None):
        self.model, self.context, self.cache = model, context, None

    def step(
        self, ids: Tensor, mask: Tensor, pos: Tensor, layers: Sequence[int], final_norm: bool
    ) -> LayerLogits:
        ctx = self.context() if self.context is not None else contextlib.nullcontext()
        with ctx:
            x, self.cache = layer_logits(
                self.model,
                ids,
                layers,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=self.cache,
                final_norm=final_norm,
            )
        return x


def repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF's CTRL penalty over ``seen`` ids ``(B, V)`` bool: negative scores x p, others / p."""
    if penalty == 1.0:
        return scores
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def sample_warp(scores: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """HF's warper order: temperature, then top-k, then top-p (min_tokens_to_keep 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use do_sample=False for greedy)")
    scores = scores.float() / temperature
    if top_k > 0:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        srt, idx = scores.sort(dim=-1, descending=False)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(-1, idx, drop), -float("inf"))
    return scores


def _ref_pass(model: nn.Module, ref_model, tokenizer=None, ref_tokenizer=None) -> _Pass:
    """The reference pass of DeRa: a second model, or the same model inside a context manager.

    The vocabulary checks need ``tokenizer`` (the HF entry point has none: it only checks the type).
    """
    if isinstance(ref_model, nn.Module):
        ref_model = as_causal_lm(ref_model)
    if isinstance(ref_model, nn.Module) and tokenizer is not None:
        if ref_tokenizer is not None and ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                "DeRa: the reference model's tokenizer differs from the aligned model's; "
                "both models must share one tokenizer"
            )
        rows = ref_model.get_output_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ValueError(
                f"DeRa: the reference model's vocabulary ({rows}) is smaller than the tokenizer's "
                f"({len(tokenizer)}); use a reference trained with the same tokenizer"
            )
    if isinstance(ref_model, nn.Module):
        return _Pass(ref_model)
    if callable(ref_model):
        return _Pass(model, context=ref_model)
    raise ValueError(
        f"ref_model must be an nn.Module or a context-manager factory, got {type(ref_model).__name__}"
    )


@dataclass(frozen=True)
class DecodeSettings:
    """What the decoding loop does at every step (everything but the model, the inputs and the hooks).

    Attributes:
        head: the decoding head (greedy when None).
        max_new_tokens: new tokens per row at most.
        repetition_penalty: CTRL penalty on the head's scores (1.0 = off).
        eos_token_ids: ids that end a row.
        pad_token_id: the id written after a row ended.
        do_sample: sample from the (warped) scores instead of taking the argmax.
        temperature: sampling temperature.
        top_k: keep the k best scores when sampling (0 = off).
        top_p: nucleus mass when sampling (1.0 = off).
        final_norm: apply the model's final norm to early layers (SLED, DoLa).
        penalty_before_mix: DeRa: penalise the aligned logits before mixing (HF processor order).
    """

    head: Head | None = None
    max_new_tokens: int = 32
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    final_norm: bool = False
    penalty_before_mix: bool = False


def decode(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    settings: DecodeSettings,
    *,
    ref: _Pass | None = None,
    generator: torch.Generator | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
    processor: Callable[[Tensor, Tensor], Tensor] | None = None,
    criteria: Callable[[Tensor, Tensor], Tensor] | None = None,
    streamer=None,
) -> tuple[Tensor, Tensor]:
    """The decoding loop on left-padded ids.

    ``stop(row, new_ids)`` ends a row early (stop strings). The HF entry point passes HF's prepared
    lists: ``processor(ids, scores)`` replaces the built-in repetition penalty *and* the sampling
    warpers (HF puts temperature / top-k / top-p into it), so ``temperature``, ``top_k`` and ``top_p``
    are not applied again; ``criteria(ids, scores) -> (B,) bool`` ends rows (HF's
    ``StoppingCriteriaList``: max length, EOS, stop strings, max time); ``streamer.put(new ids (B,))``
    is called after every step and ``streamer.end()`` once at the end, as HF's sampling loop does.

    Returns:
        ``(new ids (B, T) with pads after a row ends, number of real new tokens per row (B,))``.
    """
    cfg = settings
    head = cfg.head if cfg.head is not None else Greedy()
    if head.uses_ref and ref is None:
        raise ValueError("the DeRa head needs ref_model= (a reference model or e.g. model.disable_adapter)")
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty={cfg.repetition_penalty} must be > 0 (1.0 = off)")
    n, tied = model_info(model)
    layers = head.required_layers(n, tied)
    ref_layers = ()
    if ref is not None:
        rn, rtied = model_info(ref.model)
        ref_layers = head.required_layers(rn, rtied)
    b = input_ids.shape[0]
    mask = attention_mask.long()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, S) per-row positions under left padding
    vocab = model.get_output_embeddings().weight.shape[0]
    seen = torch.zeros(b, vocab, device=input_ids.device)
    seen.scatter_add_(1, input_ids, mask.float())  # counts of prompt ids, pads excluded
    eos = torch.tensor(list(cfg.eos_token_ids), device=input_ids.device, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    lengths = torch.zeros(b, dtype=torch.long, device=input_ids.device)
    ids, out = input_ids, []
    all_ids = input_ids
    aligned = _Pass(model)
    for _ in range(cfg.max_new_tokens):
        x = aligned.step(ids, mask, pos, layers, cfg.final_norm)
        r = ref.step(ids, mask, pos, ref_layers, cfg.final_norm) if ref is not None else None
        if cfg.penalty_before_mix and r is not None:
            x = LayerLogits(
                x.early,
                repetition_penalty(x.mature, seen[:, : x.mature.shape[-1]] > 0, cfg.repetition_penalty),
                x.layers,
                x.num_layers,
                x.tied,
            )
        scores = head(x, r)  # (B, V')
        if processor is not None:  # HF's list: penalties, then its warpers when sampling (float32, as HF)
            scores = processor(all_ids, scores.float())
        elif not cfg.penalty_before_mix:
            scores = repetition_penalty(scores, seen[:, : scores.shape[-1]] > 0, cfg.repetition_penalty)
        if cfg.do_sample:
            if processor is None:
                warped = sample_warp(scores, cfg.temperature, cfg.top_k, cfg.top_p)
            else:  # HF's processors already warped
                warped = scores.float()
            nxt = torch.multinomial(warped.softmax(-1), 1, generator=generator).squeeze(1)  # (B,)
        else:
            nxt = scores.argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
        out.append(nxt)
        lengths += (~done).long()
        seen.scatter_add_(1, nxt[:, None], (~done).float()[:, None])
        all_ids = torch.cat([all_ids, nxt[:, None]], 1)  # (B, S + t)
        if streamer is not None:
            streamer.put(nxt.cpu())
        done = done | torch.isin(nxt, eos)
        if criteria is not None:
            done = done | criteria(all_ids, scores).to(done.device)
        if stop is not None:
            new = torch.stack(out, 1).tolist()
            for row in range(b):
                if not done[row] and stop(row, new[row]):
                    done[row] = True
        if bool(done.all()):
            break
        ids = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones(b, 1)], 1)
        pos = pos[:, -1:] + 1
    if streamer is not None:
        streamer.end()
    if not out:
        return input_ids.new_zeros(b, 0), lengths
    return torch.stack(out, 1), lengths  # (B, T), (B,)


def generate(
    model: nn.Module,
    tokenizer,
    prompts: str | Sequence[str],
    head: Head | None = None,
    max_new_tokens: int = 32,
    ref_model: nn.Module | Callable[[], contextlib.AbstractContextManager] | None = None,
    ref_tokenizer=None,
    repetition_penalty: float = 1.0,
    stop_strings: Sequence[str] = (),
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    final_norm: bool = False,
    penalty_before_mix: bool = False,
    add_special_tokens: bool = True,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Generate continuations of ``prompts`` with ``head``.

    Args:
        model: an HF causal LM (the aligned model for DeRa), or a model that offers one as
            ``model.as_causal_lm()`` (memexp's ``MoMEModel``: routed on the prompt, the question).
        tokenizer: its tokenizer (left padding is used whatever its setting).
        prompts: one prompt or a list (batched).
        head: Greedy (default), DoLa, SLED, DeRa, or a composition.
        max_new_tokens: most tokens generated per prompt.
        ref_model: DeRa's reference: a second model, or a context-manager factory that switches the
            adapters off (``model.disable_adapter``).
        ref_tokenizer: the reference model's tokenizer, checked against ``tokenizer`` when given.
        repetition_penalty: HF's CTRL penalty, applied after the head (1.0 = off).
        stop_strings: a row stops once its decoded text contains one of them; the text is cut before it.
        do_sample, temperature, top_k, top_p: sampling instead of argmax (any head).
        seed: seed of the sampler (a fresh ``torch.Generator``; same tokens as HF's sampling after
            ``torch.manual_seed(seed)`` with the same warpers).
        final_norm: apply the final norm to early layers (off, as the references).
        penalty_before_mix: DeRa compatibility with HF processors: penalise the aligned logits, then mix.
        add_special_tokens: let the tokenizer add its special tokens (BOS...); False for prompts that
            already hold them, e.g. rendered by ``tokenizer.apply_chat_template``.
        generator: the sampler's generator, instead of ``seed`` (one stream over several calls).

    Returns:
        GenerationOutput with the new ids and texts, one per prompt.
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    model = as_causal_lm(model)
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
    ref = _ref_pass(model, ref_model, tokenizer, ref_tokenizer) if ref_model is not None else None
    eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    stop = None
    if stop_strings:

        def stop(row: int, new: list[int]) -> bool:
            text = tokenizer.decode(new, skip_special_tokens=True)
            return any(s in text for s in stop_strings)

    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        settings = DecodeSettings(
            head=head,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            eos_token_ids=tuple(eos_ids),
            pad_token_id=tokenizer.pad_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            final_norm=final_norm,
            penalty_before_mix=penalty_before_mix,
        )
        ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
        new, lengths = decode(model, ids, mask, settings, ref=ref, generator=generator, stop=stop)
    token_ids, texts = [], []
    for row, n in zip(new.tolist(), lengths.tolist()):
        ids = row[:n]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = [text.index(s) for s in stop_strings if s in text]
        token_ids.append(ids)
        texts.append(text[: min(cut)] if cut else text)
    return GenerationOutput(token_ids, texts)
