"""A frozen HF causal LM with a Mixture of Memory Experts: expert sites + router, in one forward pass.

::

    from decoding.models import load_causal_lm
    from memexp.mome import MoMEConfig, MoMEModel

    backbone = load_causal_lm("tiny:llama?layers=4")
    mome = MoMEModel(backbone, MoMEConfig(num_experts=4096, k=8, rank=1, query_layer=2,
                                          sites=["model.layers.[23].mlp.down_proj"]))
    out = mome(input_ids, attention_mask=attn, question_mask=qmask)   # HF CausalLMOutput
    ids = mome.generate(prompt_ids, attention_mask=attn, max_new_tokens=16)
    with mome.experts_off():                                           # exactly the backbone
        ref = mome(input_ids, attention_mask=attn)

Routing happens inside the backbone's forward: a pre-hook on decoder layer ``query_layer`` reads its
input (``hidden_states[query_layer]`` in HF numbering), pools it over the question tokens, and writes
the selection into the :class:`~memexp.mome.layer.RoutingState` read by every expert site. Sites must lie
in layers ``>= query_layer`` so a single pass suffices.

Every call is first given a :class:`RoutingPlan` (:meth:`MoMEModel.plan`): cached ``expert_ids``
(phase 2), the prompt's routing for a cached decode step, or the question tokens to pool over:
``question_mask`` when given, else the span found by :func:`~memexp.mome.question.find_question` (the
trained prompt format, ``MoMEConfig.question_end``, or the labels); an input whose question cannot be
found is refused, never routed over its answer. :meth:`MoMEModel.generate` routes once on the prompt
and keeps that routing for every step, with or without a KV cache. Calls made on ``mome.backbone``
directly are planned by a pre-hook from the call's own arguments, by the same rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from decoding.errors import UserError
from memexp.mome.config import MoMEConfig
from memexp.mome.layer import RoutingState
from memexp.mome.question import find_question, mask_after_first
from memexp.mome.router import Router, Routing
from memexp.mome.sites import experts_off, find_decoder_layers, inject_experts, layer_of, truncated_layers


@dataclass
class RoutingPlan:
    """How one backbone call selects its experts.

    Attributes:
        fixed: ``(ids, weights)`` ``(B, K)`` given selection; the router does not run.
        question_mask: ``(B, T)`` tokens the router pools over (ignored by per-token routing).
        reuse: a cached decode step: keep the routing of the prompt.
        from_call: planned by the backbone's pre-hook from the call's arguments (re-planned every call).
    """

    fixed: tuple[torch.Tensor, torch.Tensor] | None = None
    question_mask: torch.Tensor | None = None
    reuse: bool = False
    from_call: bool = False


def _cached_tokens(past) -> int:
    """Tokens already in a KV cache (0 for None or an empty cache)."""
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[-2]) if len(past) else 0  # legacy tuple of per-layer (key, value)


class MoMEModel(nn.Module):
    """Frozen backbone + expert sites + router. Only router and expert tables have ``requires_grad``.

    Args:
        backbone: an HF causal LM; modified in place (its chosen linears are wrapped) and frozen.
        config: :class:`MoMEConfig`.
    """

    def __init__(self, backbone: nn.Module, config: MoMEConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone.requires_grad_(False)
        self.routing = RoutingState()
        self.sites = inject_experts(
            backbone,
            config.sites,
            config.num_experts,
            config.rank,
            self.routing,
            sparse=config.sparse,
            scale=config.scale,
            dtype=getattr(torch, config.dtype),
        )
        layers = find_decoder_layers(backbone)
        site_layers = {name: layer_of(backbone, layers, name) for name in self.sites}
        first = min(site_layers.values())
        self.first_site_layer = first  # the lowest block with experts: everything below stays frozen
        self.query_layer = first if config.query_layer < 0 else config.query_layer
        if not 0 <= self.query_layer < len(layers):
            raise UserError(
                f"mome.query_layer={config.query_layer} is outside 0..{len(layers) - 1} (the backbone has "
                f"{len(layers)} blocks); use -1 for the block of the first expert site"
            )
        if self.query_layer > first:
            raise UserError(
                f"query_layer={self.query_layer} comes after the expert site in layer {first} "
                f"({[n for n, i in site_layers.items() if i == first][0]}); the router must run before the "
                f"first site: use query_layer <= {first} or move the sites to later layers"
            )
        hidden = backbone.config.hidden_size
        self.router = Router(
            hidden,
            config.num_experts,
            config.k,
            config.key_dim,
            config.heads,
            config.balance,
            config.aux_weight,
            config.temperature,
            config.per_token,
            config.index,
            sparse=config.sparse,
        )
        self.last_routing: Routing | None = None
        self._plan: RoutingPlan | None = None
        backbone.register_forward_pre_hook(self._plan_backbone_call, with_kwargs=True)
        layers[self.query_layer].register_forward_pre_hook(self._route, with_kwargs=True)

    # ------------------------------------------------------------------------------------ planning
    def plan(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past=None,
        expert_ids: torch.Tensor | None = None,
        expert_weights: torch.Tensor | None = None,
    ) -> RoutingPlan:
        """Decide how a call routes (see the module docstring); nothing runs here.

        Raises:
            UserError: the question of a row cannot be found (pass ``question_mask``).
        """
        if expert_ids is not None:
            if expert_weights is None:
                k = expert_ids.shape[-1]
                expert_weights = torch.full(expert_ids.shape, 1.0 / k, device=expert_ids.device)
            return RoutingPlan(fixed=(expert_ids, expert_weights))
        if not self.routing.enabled or self.config.per_token:
            return RoutingPlan()  # experts off: nothing to route; per token: every position routes itself
        if _cached_tokens(past) > 0:
            return RoutingPlan(reuse=True)
        if question_mask is None:
            if input_ids is None:
                raise UserError(
                    "a call with inputs_embeds and without question_mask: pass question_mask=(B, T) bool "
                    "marking the question tokens"
                )
            question_mask = find_question(input_ids, attention_mask, labels, self.config.question_end)
        return RoutingPlan(question_mask=question_mask.bool())

    def prompt_question(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Question mask ``(B, T)`` of generation prompts: up to the trained question end, else all of it."""
        attended = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        if not self.config.question_end:
            return attended
        found = mask_after_first(input_ids, attended, self.config.question_end)
        return torch.where(found.any(1, keepdim=True), found, attended)

    @contextlib.contextmanager
    def selected(self, ids: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
        """Inside, every call uses the given selection ``(B, K)`` (also when the query layer's routing hook
        does not run, e.g. blocks run from a cached input above it)."""
        self.routing.ids, self.routing.weights = ids, weights
        with self._planned(RoutingPlan(fixed=(ids, weights))):
            yield

    @contextlib.contextmanager
    def _planned(self, plan: RoutingPlan) -> Iterator[None]:
        before, self._plan = self._plan, plan
        try:
            yield
        finally:
            self._plan = before

    # ------------------------------------------------------------------------------------ hooks
    def _plan_backbone_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Plan a call made on the backbone itself (HF ``generate`` steps, direct calls)."""
        if self._plan is not None and not self._plan.from_call:
            return  # planned by forward / generate / route
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values", kwargs.get("cache"))  # the name depends on transformers
        plan = self.plan(input_ids, kwargs.get("attention_mask"), labels=kwargs.get("labels"), past=past)
        self._plan = replace(plan, from_call=True)

    def _route(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state, plan = self.routing, self._plan
        if not state.enabled or plan is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H)
        bsz = hidden.shape[0]
        if plan.fixed is not None:
            ids, weights = plan.fixed
            if ids.shape[0] != bsz and ids.shape[0] > 0 and bsz % ids.shape[0] == 0:  # beams / samples
                ids, weights = (t.repeat_interleave(bsz // ids.shape[0], 0) for t in (ids, weights))
            state.ids, state.weights = ids, weights
            return
        if plan.reuse:
            if state.ids is None or state.ids.shape[0] != bsz:
                raise UserError(
                    f"a cached decode step of {bsz} sequences has no routing of their prompt: run the prompt "
                    "through this model first (or use MoMEModel.generate), or pass expert_ids"
                )
            return  # keep the prompt's routing
        mask = plan.question_mask
        if mask is not None and mask.shape != hidden.shape[:2]:
            raise UserError(
                f"question_mask has shape {tuple(mask.shape)} but the input has {tuple(hidden.shape[:2])} "
                "tokens: pass one (B, T) bool per input token"
            )
        routing = self.router(hidden, mask)
        state.ids, state.weights = routing.ids, routing.weights
        self.last_routing = routing

    # ------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        expert_ids: torch.Tensor | None = None,
        expert_weights: torch.Tensor | None = None,
        **kwargs,
    ):
        """Run the backbone with experts; returns the backbone's own output (``.logits``, ``.loss``...).

        Args:
            input_ids: ``(B, T)``.
            attention_mask: ``(B, T)``.
            question_mask: ``(B, T)`` tokens the router pools over; when None, the question is found
                from the trained prompt format or the labels (:func:`~memexp.mome.question.find_question`).
            expert_ids: ``(B, K)`` cached selection (phase 2); skips the router.
            expert_weights: ``(B, K)`` their weights (uniform ``1/K`` when None).
            **kwargs: passed to the backbone (``labels``, ``past_key_values``, ``output_hidden_states``...).

        Raises:
            UserError: no ``question_mask`` and the question of a row cannot be found.
        """
        plan = self.plan(
            input_ids,
            attention_mask,
            question_mask,
            labels=kwargs.get("labels"),
            past=kwargs.get("past_key_values", kwargs.get("cache")),  # the name depends on transformers
            expert_ids=expert_ids,
            expert_weights=expert_weights,
        )
        with self._planned(plan):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def route(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
    ) -> Routing:
        """Routing of a batch: runs the blocks up to ``query_layer`` only (no later block, no LM head).

        The backbone's block list is cut after block ``query_layer`` for the call, so this is the
        routing of a full forward (same selection) at a fraction of its cost. The inputs are questions
        (prompts): without ``question_mask`` each routes on the tokens up to its trained question end,
        else on all of it (:meth:`prompt_question`).
        """
        self.last_routing = None
        enabled, self.routing.enabled = self.routing.enabled, True  # routing also under experts_off()
        base = getattr(self.backbone, "base_model", self.backbone)  # the blocks without the LM head
        try:
            if question_mask is None:
                question_mask = self.prompt_question(input_ids, attention_mask)
            plan = self.plan(input_ids, attention_mask, question_mask)
            with self._planned(plan), truncated_layers(self.backbone, self.query_layer + 1):
                base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            self.routing.enabled = enabled
        return self.last_routing

    # ------------------------------------------------------------------------------------ HF-style access
    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def as_causal_lm(self) -> nn.Module:
        """This model with HF's causal-LM interface, routed on the prompt (``decoding.generate`` runs it)."""
        from memexp.model_view import RoutedLM

        return RoutedLM(self)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """``backbone.generate`` with the experts routed once on the prompt, kept for every step.

        The same tokens come out with or without a KV cache (``use_cache=False``): later steps never
        re-route over the generated tokens.

        Args:
            input_ids: ``(B, P)`` prompts.
            attention_mask: ``(B, P)``; all tokens when None.
            question_mask: ``(B, P)``; default: up to the trained question end
                (``MoMEConfig.question_end``) in each prompt, else the whole prompt.
            **kwargs: passed to ``backbone.generate``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.routing.enabled and not self.config.per_token:
            routing = self.route(input_ids, attention_mask, question_mask)
            plan = RoutingPlan(fixed=(routing.ids, routing.weights))
        else:
            plan = RoutingPlan()  # per token: each step routes its own positions, as in one pass
        with self._planned(plan):
            return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def experts_off(self) -> Iterator[MoMEModel]:
        """Inside, the model computes exactly the frozen backbone (the DeRa reference)."""
        with experts_off(self.backbone):
            yield self

    def expert_parameters(self) -> list[nn.Parameter]:
        """The expert tables ``A``, ``B`` of every site."""
        return [p for site in self.sites.values() for p in (site.A.weight, site.B.weight)]

    def freeze_router(self) -> None:
        """Freeze query projection, keys and query statistics (phase 2)."""
        self.router.requires_grad_(False)
        self.router.eval()

    def train(self, mode: bool = True) -> MoMEModel:
        super().train(mode)
        self.backbone.train(False)  # the frozen backbone never runs dropout
        if not any(p.requires_grad for p in self.router.parameters()):
            self.router.eval()
        return self

    def bytes_per_expert(self) -> int:
        """Bytes of one expert over all sites, plus its key."""
        key = self.config.key_dim * self.router.keys.weight.element_size()
        return sum(site.bytes_per_expert() for site in self.sites.values()) + key
