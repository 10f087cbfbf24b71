"""Frozen-layer cache: compute the blocks below the lowest trained layer once per fact, train above it.

::

    embed -> layers[0 .. cut-1] -> h_cut (B, T, H)   frozen: computed once per fact (LayerCache.build)
                                     |
                                     +--> layers[cut .. N-1] -> norm -> lm_head at answer positions only
                                          (run_upper + head_at, every training step)

With a frozen backbone whose trainable modules (memory experts, a LoRA restricted to the top layers)
all sit in blocks ``>= cut``, the input of block ``cut`` of a fact never changes during training. The
cache holds it per fact id (right-padded, only the fact's own tokens are kept; padding reads zeros,
which a causal, padding-masked attention never looks at) and, optionally, a pooled feature of an
earlier block (the router's query features when the query layer is below the cut).

The cache is valid for one backbone prefix and one set of tokenised facts: :func:`cache_fingerprint`
hashes the weights of the embedding and the blocks below the cut, the model's config and every fact's
token ids (which depend on the facts, the tokenizer and the prompt template), so a stale cache is never
reused (:meth:`LayerCache.load` returns None on a mismatch).

Only HF Llama models (``model_type`` ``llama``, e.g. SmolLM2: ``model.model.{embed_tokens, layers, norm,
rotary_emb}`` + ``lm_head``) are supported: their decoder layers take ``(hidden, attention_mask,
position_embeddings, position_ids)``, which :func:`run_layers` reproduces from ``transformers``' own mask
and rotary code. Look-alikes are refused rather than guessed at (Gemma scales its embeddings, Qwen2 and
Mistral may use sliding-window masks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from decoding.errors import UserError
from decoding.run_folder import atomic_file

SUPPORTED = ("llama",)  # model_type values whose forward run_layers reproduces (checked by the tests)


@dataclass
class DecoderParts:
    """The pieces of a Llama-family causal LM that the cache runs by hand."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module
    lm_head: nn.Module
    config: object


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Split a Llama-family causal LM into embedding, blocks, final norm, rotary embedding and LM head.

    Raises:
        UserError: another architecture (one line naming it).
    """
    base = getattr(model, "model", None)
    names = ("embed_tokens", "layers", "norm", "rotary_emb")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if (
        model_type not in SUPPORTED
        or not all(hasattr(base, n) for n in names)
        or not hasattr(model, "lm_head")
    ):
        raise UserError(
            f"the frozen-layer cache supports Llama-family models ({', '.join(SUPPORTED)}); "
            f"{type(model).__name__} (model_type {model_type!r}) is not one: set cache_frozen_layers false"
        )
    return DecoderParts(
        base.embed_tokens, base.layers, base.norm, base.rotary_emb, model.lm_head, base.config
    )


def run_layers(
    parts: DecoderParts, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """Blocks ``start .. stop-1`` on ``hidden`` ``(B, T, H)`` (the input of block ``start``), as the HF
    forward runs them (same causal mask, rotary embeddings and call), without a KV cache."""
    from transformers.masking_utils import create_causal_mask

    position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]  # (1, T)
    mask = create_causal_mask(
        config=parts.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=None,
        position_ids=position_ids,
    )
    position_embeddings = parts.rotary(hidden, position_ids=position_ids)  # (cos, sin), (1, T, d_head)
    for layer in parts.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            cache=None,
            use_cache=False,
        )
    return hidden


def head_at(parts: DecoderParts, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Final norm + LM head at the ``keep`` ``(B, T)`` positions of ``hidden`` ``(B, T, H)`` -> ``(N, V)``."""
    return parts.lm_head(parts.norm(hidden[keep]))  # norm is per position: norm(h)[keep] == norm(h[keep])


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def cache_fingerprint(model: nn.Module, cut: int, facts: Iterable[tuple[int, list[int]]]) -> str:
    """Hex digest of what the cached states depend on.

    Args:
        model: the (Llama-family) backbone.
        cut: the cached block input.
        facts: ``(fact_id, input_ids)`` of every cached fact (the ids carry facts, tokenizer, template).
    """
    parts = decoder_parts(model)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__name__}:cut={cut}:".encode())
    digest.update(parts.config.to_json_string(use_diff=False).encode())
    for prefix, module in [("embed", parts.embed), ("rotary", parts.rotary)] + [
        (f"layers.{i}", layer) for i, layer in enumerate(parts.layers[:cut])
    ]:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            _hash_tensor(digest, f"{prefix}.{name}", tensor)
    for fact_id, ids in sorted(facts, key=lambda f: f[0]):
        digest.update(json.dumps([int(fact_id), [int(i) for i in ids]]).encode())
    return digest.hexdigest()


def batch_facts(batch: dict[str, torch.Tensor]) -> list[tuple[int, list[int]]]:
    """``(fact_id, input_ids)`` of each row of a right-padded facts batch (padding dropped)."""
    lengths = batch["attention_mask"].sum(1).tolist()
    ids = batch["input_ids"].tolist()
    return [(int(f), row[:n]) for f, row, n in zip(batch["fact_ids"].tolist(), ids, lengths)]


class LayerCache:
    """The input of block ``cut`` per fact (and an optional pooled feature of an earlier block).

    Args:
        cut: the block whose input is cached.
        states: ``(F, T_max, H)`` per cached fact, zero after the fact's own tokens.
        lengths: ``(F,)`` tokens of each fact.
        rows: ``(max_fact_id + 1,)`` the row of each fact id in ``states``, -1 when not cached.
        fingerprint: :func:`cache_fingerprint` of the backbone and facts.
        features: ``(F, H_f)`` pooled features of block ``pool_layer``'s input, or None.
        pool_layer: the block whose input ``features`` pool, or None.
    """

    def __init__(
        self,
        cut: int,
        states: torch.Tensor,
        lengths: torch.Tensor,
        rows: torch.Tensor,
        fingerprint: str,
        features: torch.Tensor | None = None,
        pool_layer: int | None = None,
    ) -> None:
        self.cut, self.states, self.lengths, self.rows = cut, states, lengths, rows
        self.fingerprint, self.features, self.pool_layer = fingerprint, features, pool_layer

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        cut: int,
        pool_layer: int | None = None,
        pool: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor] | None = None,
        fingerprint: str | None = None,
    ) -> LayerCache:
        """Run embedding + blocks ``0 .. cut-1`` over every batch of facts and keep the results.

        Args:
            model: the frozen Llama-family backbone (trainable modules must sit in blocks ``>= cut``).
            batches: right-padded facts batches (``input_ids``, ``attention_mask``, ``fact_ids``...).
            cut: the block whose input is cached (0 caches the embeddings).
            pool_layer: also keep ``pool(input of block pool_layer, batch)``; needs ``pool_layer < cut``.
            pool: ``(B, T, H), batch -> (B, H_f)`` (e.g. the router's mean over the question tokens).
            fingerprint: the facts' :func:`cache_fingerprint` when already computed.
        """
        parts = decoder_parts(model)
        if not 0 <= cut <= len(parts.layers):
            raise UserError(f"cut={cut} is outside 0..{len(parts.layers)} (the model's blocks)")
        if pool_layer is not None and not (0 <= pool_layer < cut and pool is not None):
            raise UserError(f"pool_layer={pool_layer} must be below cut={cut} and come with a pool function")
        facts, chunks, features = [], [], []
        for batch in batches:
            attn = batch["attention_mask"]
            hidden = parts.embed(batch["input_ids"])  # (B, T, H)
            start = 0
            if pool_layer is not None:
                hidden = run_layers(parts, hidden, attn, 0, pool_layer)
                features.append(pool(hidden, batch))  # (B, H_f)
                start = pool_layer
            hidden = run_layers(parts, hidden, attn, start, cut)
            hidden = hidden * attn[..., None].to(hidden.dtype)  # padding -> 0
            facts.extend(batch_facts(batch))
            chunks.append(hidden)
        if not facts:
            raise UserError("no facts to cache: the training set is empty")
        t_max = max(len(ids) for _, ids in facts)
        states = torch.zeros(
            len(facts), t_max, chunks[0].shape[-1], dtype=chunks[0].dtype, device=chunks[0].device
        )
        at = 0
        for chunk in chunks:  # (B, T, H) with T <= t_max
            states[at : at + chunk.shape[0], : chunk.shape[1]] = chunk
            at += chunk.shape[0]
        ids = torch.tensor([f for f, _ in facts], device=states.device)
        rows = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long, device=states.device)
        rows[ids] = torch.arange(len(facts), device=states.device)
        lengths = torch.tensor([len(i) for _, i in facts], device=states.device)
        return cls(
            cut,
            states,
            lengths,
            rows,
            fingerprint or cache_fingerprint(model, cut, facts),
            torch.cat(features) if features else None,
            pool_layer,
        )

    def _rows(self, fact_ids: torch.Tensor) -> torch.Tensor:
        ids = fact_ids.to(self.rows.device)
        rows = torch.where(ids < self.rows.shape[0], self.rows[ids.clamp_max(self.rows.shape[0] - 1)], -1)
        if (rows < 0).any():
            missing = ids[rows < 0].tolist()[:5]
            raise UserError(f"fact ids {missing} are not in the layer cache; rebuild it with these facts")
        return rows

    def covers(self, fact_ids: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Whether every fact id ``(B,)`` is cached with ``lengths`` ``(B,)`` tokens (fact ids are unique
        within a fit, so a cached id of the right length is that fact as tokenised when cached)."""
        ids = fact_ids.to(self.rows.device)
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.rows.shape[0]:
            return False
        rows = self.rows[ids]
        return bool((rows >= 0).all()) and torch.equal(self.lengths[rows], lengths.to(self.lengths))

    def lookup(self, fact_ids: torch.Tensor, length: int) -> torch.Tensor:
        """Block-``cut`` inputs of ``fact_ids`` ``(B,)``, right-padded to ``length``: ``(B, T, H)``."""
        rows = self._rows(fact_ids)
        if int(self.lengths[rows].max()) > length:
            raise UserError(f"a cached fact is longer than the batch ({length} tokens); the cache is stale")
        states = self.states[rows, : min(length, self.states.shape[1])]  # (B, <=T, H)
        if states.shape[1] < length:
            states = torch.nn.functional.pad(states, (0, 0, 0, length - states.shape[1]))
        return states

    def pooled(self, fact_ids: torch.Tensor) -> torch.Tensor:
        """Cached pooled features of ``fact_ids`` ``(B,)`` -> ``(B, H_f)``."""
        if self.features is None:
            raise ValueError("this layer cache holds no pooled features (built without pool_layer)")
        return self.features[self._rows(fact_ids)]

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the cache to ``path`` (atomically)."""
        payload = {"cut": self.cut, "fingerprint": self.fingerprint, "pool_layer": self.pool_layer}
        for name in ("states", "lengths", "rows", "features"):
            value = getattr(self, name)
            payload[name] = None if value is None else value.cpu()
        with atomic_file(path) as fh:
            torch.save(payload, fh)

    @classmethod
    def load(
        cls, path: str | Path, fingerprint: str, device: torch.device | str = "cpu"
    ) -> LayerCache | None:
        """The cache at ``path`` if it exists and was built for ``fingerprint``, else None."""
        path = Path(path)
        if not path.is_file():
            return None
        payload = torch.load(path, map_location=device, weights_only=True)
        if payload.get("fingerprint") != fingerprint:
            return None
        return cls(**payload)
