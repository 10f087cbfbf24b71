"""How decoding sees a learner's model: its HF causal-LM view and its DeRa reference.

The decoding heads (:mod:`decoding.layers`) read per-layer logits from an HF causal LM (``config``,
``get_output_embeddings``, ``forward(..., output_hidden_states=True)``). Full fine-tuning and peft LoRA
models are that already; a memory-expert model (:class:`memexp.mome.MoMEModel`) routes on the question
tokens, which a plain HF call cannot pass, so :class:`RoutedLM` forwards every call with them
(:class:`PromptRoutedLM`: the opt-in view for inputs with no question, routed on the whole input).

DeRa's reference is the same model without its adaptation (:func:`reference_of`)::

    MoME   model.experts_off        experts off (no second copy of the weights)
    LoRA   model.disable_adapter    adapter off
    full   swapped_weights(model, base_state)   the base weights loaded in place for the reference pass
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Reference = Callable[[], contextlib.AbstractContextManager]


def is_routed(model: nn.Module) -> bool:
    """Whether ``model`` is a memory-expert model (a backbone whose experts can be switched off)."""
    return hasattr(model, "experts_off") and hasattr(model, "backbone")


class RoutedLM(nn.Module):
    """A memory-expert model seen as a plain HF causal LM, routing on the question tokens.

    Args:
        mome_model: the memory-expert model (``backbone``, ``forward(..., question_mask=)``).
        question_mask: ``(B, T)`` tokens the router pools over (a facts batch's ``prompt_mask``); when
            None, the prompt of each full-sequence call is the question (generation: the prefill's
            attention mask); calls with a KV cache keep the prompt's routing.
    """

    def __init__(self, mome_model: nn.Module, question_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.inner = mome_model
        self.question_mask = question_mask  # (B, T) bool or None
        self.config = mome_model.backbone.config

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.inner.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.inner.backbone.get_decoder()

    def experts_off(self) -> contextlib.AbstractContextManager:
        """The DeRa reference: the backbone alone."""
        return self.inner.experts_off()

    disable_adapter = experts_off  # peft's name for "adaptation off" (``decoding --ref_model adapters-off``)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        mask = self.question_mask
        if mask is not None and mask.shape != input_ids.shape:
            mask = None  # a decode step after the prompt: the routing of the prompt is kept
        # without a mask MoMEModel finds the question itself (its recorded question end), or refuses
        return self.inner(input_ids, attention_mask=attention_mask, question_mask=mask, **kwargs)


class PromptRoutedLM(RoutedLM):
    """A MoME model as a plain causal LM for *any* input, an explicit opt-in for scoring general text.

    Calls without a KV cache route on their question as generation does
    (:meth:`~memexp.mome.MoMEModel.prompt_question`: up to the trained question end when the input holds
    one, else **the whole input**); calls with a cache keep the routing of the call that filled it,
    repeated over a batch of continuations that share that prefix (multiple-choice scoring). The plain
    :class:`RoutedLM` (and ``MoMEModel.forward``) refuse an input whose question cannot be found instead:
    on a fact prompt scored with its answer, routing on the whole input is silently wrong. Use this view
    where the input has no question by nature (real text, multiple choice without ``"\nA:"``), as
    :mod:`memexp.interference` measurements of a memory-expert model do.
    """

    def __init__(self, mome_model: nn.Module) -> None:
        super().__init__(mome_model)
        self.routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from memexp.mome.model import _cached_tokens

        past = kwargs.get("past_key_values", kwargs.get("cache"))  # the name depends on transformers
        if self.routing is None or _cached_tokens(past) == 0:
            routing = self.inner.route(
                input_ids, attention_mask, self.inner.prompt_question(input_ids, attention_mask)
            )
            self.routing = (routing.ids, routing.weights)
        ids, weights = self.routing
        if ids.shape[0] != input_ids.shape[0]:
            ids, weights = (
                t.repeat_interleave(input_ids.shape[0] // ids.shape[0], 0) for t in (ids, weights)
            )
        return self.inner(
            input_ids, attention_mask=attention_mask, expert_ids=ids, expert_weights=weights, **kwargs
        )


def head_model(model: nn.Module, batch: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The HF causal LM the decoding heads read for ``batch`` (a memory-expert model: :class:`RoutedLM`
    routed on the batch's ``prompt_mask``); other models as they are."""
    if is_routed(model):
        return RoutedLM(model, None if batch is None else batch.get("prompt_mask"))
    return model


@contextlib.contextmanager
def swapped_weights(model: nn.Module, base_state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run ``model`` with ``base_state`` loaded in place; restore its own weights afterwards."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items() if k in base_state}
    model.load_state_dict(base_state, strict=False)
    try:
        yield
    finally:
        model.load_state_dict(own, strict=False)


def base_state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s weights: what :func:`swapped_weights` swaps in (full fine-tuning)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def reference_of(model: nn.Module, base_state: dict[str, torch.Tensor] | None = None) -> Reference | None:
    """Context-manager factory that switches ``model``'s adaptation off (DeRa's reference), or None.

    Memory experts (``experts_off``): experts off; peft (``disable_adapter``): adapter off; otherwise
    (full fine-tuning) the base weights in ``base_state`` loaded in place (:func:`swapped_weights`), or
    None when no base state is kept.
    """
    if hasattr(model, "experts_off"):
        return model.experts_off
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.disable_adapter
    if base_state is None:
        return None
    return lambda: swapped_weights(model, base_state)
