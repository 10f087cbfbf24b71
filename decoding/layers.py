"""Per-layer (early-exit) logits of any HF causal LM, projected by one stacked lm_head GEMM.

Convention (docs/algorithms/decoding.md, 'Early-exit logits'; the SLED and HF-DoLa references)::

    hidden_states = model(ids, output_hidden_states=True).hidden_states   # N + 1 entries
    hidden_states[0]        embedding output            -> early logits z^0 = lm_head(h0)
    hidden_states[l], 0<l<N input of block l, UN-normed -> early logits z^l = lm_head(h_l)
    hidden_states[N]        final-normed state          -> mature logits z^N = outputs.logits

Early layers get **no final norm, softcap or scaling** by default (``final_norm=True`` applies
the model's final norm first; a different method, off by default, see voidism/DoLa#9). The mature
logits are ``outputs.logits``, so whatever the model does there (Gemma-2's ``final_logit_softcapping``,
a tied/untied lm_head, a bias) is kept for layer N and *not* applied to early layers. Gemma's
embedding scaling (``* sqrt(d)``) is part of ``hidden_states[0]`` in HF, so z^0 of a Gemma model is
the scaled embedding projected; nothing else is needed. Tied and untied embeddings follow the same
path (``model.get_output_embeddings()``).

The fast path projects all requested layers with **one** call of the lm_head module on a stacked
``(L, B, P, d)`` tensor (one read of W_U instead of L), and only at the positions asked for: the
last position while generating (``logits_to_keep=1`` for the mature logits too).

:class:`LayerLogits` is what every head consumes; a plain tensor ``(N + 1, *batch, V)`` (rows
0..N-1 early, row N mature) is accepted by the heads as well, see :func:`as_layer_logits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from decoding.models import cache_kwargs, output_cache


@dataclass
class LayerLogits:
    """Early-exit logits of some layers plus the mature logits, over any batch shape.

    Attributes:
        early: ``(C, *batch, V)`` logits of the candidate layers, in the model dtype.
        mature: ``(*batch, V)`` final logits (``outputs.logits``).
        layers: hidden-state index of each row of ``early`` (0 = embeddings).
        num_layers: N, the model's number of blocks; the mature layer is N.
        tied: whether the model ties input and output embeddings (DoLa's buckets depend on it).
    """

    early: Tensor
    mature: Tensor
    layers: tuple[int, ...]
    num_layers: int
    tied: bool = False

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        if self.early.shape[0] != len(self.layers):
            raise ValueError(f"early has {self.early.shape[0]} rows but {len(self.layers)} layer ids")
        if self.early.shape[1:] != self.mature.shape:
            raise ValueError(f"early rows {tuple(self.early.shape[1:])} != mature {tuple(self.mature.shape)}")

    def select(self, layers: Sequence[int]) -> Tensor:
        """Rows of ``early`` for the given layer ids, ``(len(layers), *batch, V)``."""
        rows = []
        for layer in layers:
            if layer not in self.layers:
                raise ValueError(
                    f"layer {layer} was not computed (have {list(self.layers)}); ask for it in "
                    "layer_logits(..., layers=...) or use head.required_layers(num_layers, tied)"
                )
            rows.append(self.layers.index(layer))
        if rows == list(range(len(self.layers))):
            return self.early
        return self.early[torch.tensor(rows, device=self.early.device)]

    def map(self, fn) -> LayerLogits:
        """Apply ``fn`` to ``early`` and ``mature`` (e.g. a vocabulary slice)."""
        return LayerLogits(fn(self.early), fn(self.mature), self.layers, self.num_layers, self.tied)


def as_layer_logits(x: LayerLogits | Tensor, tied: bool = False) -> LayerLogits:
    """Wrap a plain ``(N + 1, *batch, V)`` tensor (rows 0..N-1 early, row N mature) as LayerLogits."""
    if isinstance(x, LayerLogits):
        return x
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(
            "expected LayerLogits or a tensor (layers, *batch, vocab) with at least 2 layers "
            f"(the last is the mature one), got {type(x).__name__} of shape {getattr(x, 'shape', None)}"
        )
    n = x.shape[0] - 1
    return LayerLogits(x[:-1], x[-1], tuple(range(n)), n, tied)


def lm_head_of(model: nn.Module) -> nn.Module:
    """The output projection (``get_output_embeddings()``), or a clear error."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no accessible lm_head (get_output_embeddings() is None); "
            "pass an AutoModelForCausalLM (e.g. LlamaForCausalLM), not the bare backbone"
        )
    return head


def final_norm_of(model: nn.Module) -> nn.Module:
    """The final norm applied before the lm_head (``norm`` / ``ln_f`` / ``final_layernorm``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None), getattr(model, "transformer", None)):
        for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
            if owner is not None and isinstance(getattr(owner, name, None), nn.Module):
                return getattr(owner, name)
    raise ValueError(f"cannot find the final norm of {type(model).__name__}; use final_norm=False")


def model_info(model: nn.Module) -> tuple[int, bool]:
    """``(num_hidden_layers, tied_embeddings)`` of an HF causal LM."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n is None:
        raise ValueError(f"{type(model).__name__} has no config.num_hidden_layers; not an HF causal LM?")
    out, inp = lm_head_of(model), model.get_input_embeddings()
    tied = out.weight.data_ptr() == inp.weight.data_ptr()
    return int(n), bool(tied)


def check_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Validate early-layer ids: each in ``[0, N - 1]`` (N is the mature layer)."""
    for layer in layers:
        if not 0 <= int(layer) < num_layers:
            raise ValueError(
                f"layer index {layer} is out of range: early layers are 0..{num_layers - 1} "
                f"(0 = embeddings, {num_layers} = mature, always included)"
            )
    return tuple(int(i) for i in layers)


def project_layers(
    model: nn.Module,
    hidden_states: Sequence[Tensor],
    layers: Sequence[int],
    index: Tensor | None = None,
    final_norm: bool = False,
) -> Tensor:
    """Project ``hidden_states[l]`` for l in ``layers`` with one stacked lm_head call.

    Args:
        model: the HF causal LM (its lm_head and, if ``final_norm``, its final norm).
        hidden_states: the ``output_hidden_states`` tuple, each ``(B, S, d)``.
        layers: early-layer ids.
        index: ``(B, P)`` positions to project; the last position when None.
        final_norm: apply the final norm to early states first (off in the references).

    Returns:
        ``(L, B, V)`` when ``index`` is None, else ``(L, B, P, d)`` -> ``(L, B, P, V)``.
    """
    if not layers:
        b = hidden_states[0].shape[0]
        shape = (0, b) if index is None else (0, *index.shape)
        w = lm_head_of(model).weight
        return w.new_zeros(*shape, w.shape[0])
    if index is None:
        h = torch.stack([hidden_states[i][:, -1] for i in layers])  # (L, B, d)
    else:
        d = hidden_states[0].shape[-1]
        gather = index.unsqueeze(-1).expand(*index.shape, d)  # (B, P, d)
        h = torch.stack([hidden_states[i].gather(1, gather) for i in layers])  # (L, B, P, d)
    if final_norm:
        h = final_norm_of(model)(h)
    return lm_head_of(model)(h)  # (L, B, [P,] V): one GEMM over all layers


def layer_logits(
    model: nn.Module,
    input_ids: Tensor,
    layers: Sequence[int],
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    past_key_values=None,
    final_norm: bool = False,
    use_cache: bool = True,
) -> tuple[LayerLogits, object]:
    """One forward pass; early-exit logits of ``layers`` and the mature logits at the last position.

    Args:
        model: any HF causal LM.
        input_ids: ``(B, S)``.
        layers: early-layer ids (``[]`` for greedy: no hidden states are requested).
        attention_mask, position_ids, past_key_values: as for the model's forward.
        final_norm: apply the final norm to early layers (off by default, as the references).
        use_cache: return an updated KV cache.

    Returns:
        ``(LayerLogits with (C, B, V) / (B, V), past_key_values)``.
    """
    n, tied = model_info(model)
    layers = check_layers(layers, n)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **cache_kwargs(past_key_values),
        use_cache=use_cache,
        output_hidden_states=bool(layers),
        logits_to_keep=1,
    )
    mature = out.logits[:, -1]  # (B, V)
    if layers:
        hs = out.hidden_states
        if hs is None or len(hs) != n + 1:
            raise ValueError(
                f"{type(model).__name__} did not return {n + 1} hidden states; it must support "
                "output_hidden_states=True"
            )
        early = project_layers(model, hs, layers, final_norm=final_norm)  # (C, B, V)
    else:
        early = mature.new_zeros(0, *mature.shape)
    return LayerLogits(early, mature, layers, n, tied), output_cache(out)


def layer_logits_at(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    index: Tensor,
    layers: Sequence[int],
    final_norm: bool = False,
    past_key_values=None,
    position_ids: Tensor | None = None,
) -> LayerLogits:
    """Teacher-forced per-layer logits at chosen positions of a (right-padded) batch.

    Args:
        input_ids: ``(B, S)`` (the tokens after ``past_key_values``, if any).
        attention_mask: ``(B, past + S)``.
        index: ``(B, P)`` positions in ``input_ids`` whose next-token logits are wanted.
        layers: early-layer ids.
        final_norm: as in :func:`layer_logits`.
        past_key_values: a cache of a shared prefix (not updated in a way the caller relies on).
        position_ids: ``(B, S)`` positions, needed with a cache.

    Returns:
        LayerLogits with ``early (C, B, P, V)`` and ``mature (B, P, V)``.
    """
    n, tied = model_info(model)
    layers = check_layers(layers, n)
    keep = input_ids.shape[1] - int(index.min())
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **cache_kwargs(past_key_values),
        use_cache=past_key_values is not None,
        output_hidden_states=bool(layers),
        logits_to_keep=keep,
    )
    start = input_ids.shape[1] - keep
    vocab = out.logits.shape[-1]
    mature = out.logits.gather(1, (index - start).unsqueeze(-1).expand(*index.shape, vocab))  # (B, P, V)
    if layers:
        early = project_layers(model, out.hidden_states, layers, index=index, final_norm=final_norm)
    else:
        early = mature.new_zeros(0, *mature.shape)
    return LayerLogits(early, mature, layers, n, tied)
