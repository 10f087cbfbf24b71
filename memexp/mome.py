"""A frozen HF causal LM with a Mixture of Memory Experts: expert sites + router, in one forward pass.

::

    from decoding.models import load_causal_lm
    from memexp.mome import MoMEConfig, MoMEModel

    backbone = load_causal_lm("tiny:llama?layers=4")
    mome = MoMEModel(backbone, MoMEConfig(num_experts=4096, k=8, rank=1, query_layer=2,
                                          sites=["model.layers.[23].mlp.down_proj"]))
    out = mome(input_ids, attention_mask=attn, question_mask=qmask)   # HF CausalLMOutput
    with mome.experts_off():                                           # exactly the backbone
        ref = mome(input_ids, attention_mask=attn)

Routing happens inside the backbone's forward: a pre-hook on decoder layer ``query_layer`` reads its
input (``hidden_states[query_layer]`` in HF numbering), pools it over the question tokens, and writes
the selection into the :class:`~memexp.experts.RoutingState` read by every expert site. Sites must lie
in layers ``>= query_layer`` so a single pass suffices. The question mask is ``question_mask`` when given,
else the call's ``attention_mask`` (the whole prompt, as in generation). Decode steps with a non-empty
KV cache reuse the prompt's routing, so ``backbone.generate`` and cached decoding loops work unchanged.
Phase 2 passes cached ``expert_ids``/``expert_weights`` and skips the router.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from decoding.errors import UserError
from memexp.experts import RoutingState, check_bank_size
from memexp.index import IndexConfig
from memexp.router import Router, Routing
from memexp.sites import experts_off, find_decoder_layers, inject_experts, layer_of


@dataclass
class MoMEConfig:
    """Shape of the expert bank and router.

    Attributes:
        num_experts: E.
        k: experts selected per input and head.
        rank: r of every expert.
        sites: glob patterns of the ``nn.Linear`` modules that get experts.
        query_layer: the router reads ``hidden_states[query_layer]`` (input of that block); -1 means the
            block of the first site.
        key_dim: d_k of keys and queries.
        heads: router heads (``heads * k`` experts per input).
        balance: ``batchnorm`` or ``none`` (query normalisation).
        aux_weight: weight of the query-decorrelation balancing loss.
        temperature: re-scoring softmax temperature.
        per_token: route every token instead of every question.
        scale: multiplier of the expert sum.
        sparse: sparse gradients for expert tables and keys.
        dtype: storage dtype of the expert tables (``float32`` or ``bfloat16``).
        index: candidate search settings.
        gate: fact gate radius relative to the spacing of the memorised facts' queries (0 = off): at
            phase-2 start the experts are restricted to questions near a memorised one, so any other
            input gets exactly the backbone (:mod:`memexp.gate`; per-question routing only).
    """

    num_experts: int = 4096
    k: int = 8
    rank: int = 1
    sites: list[str] = field(default_factory=lambda: ["*.layers.*.mlp.down_proj"])
    query_layer: int = -1
    key_dim: int = 64
    heads: int = 1
    balance: str = "batchnorm"
    aux_weight: float = 0.0
    temperature: float = 1.0
    per_token: bool = False
    scale: float = 1.0
    sparse: bool = True
    dtype: str = "float32"
    index: IndexConfig = field(default_factory=IndexConfig)
    gate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
        check_bank_size(self.num_experts, self.rank, self.k)
        if (
            isinstance(self.sites, str)
            or not self.sites
            or not all(isinstance(p, str) and p for p in self.sites)
        ):
            raise UserError(
                f"mome.sites={self.sites!r} must be a non-empty list of module-name patterns, "
                "e.g. ['*.layers.*.mlp.down_proj']"
            )
        for name in ("key_dim", "heads"):
            if getattr(self, name) < 1:
                raise UserError(f"mome.{name}={getattr(self, name)} must be >= 1")
        if self.query_layer < -1:
            raise UserError(
                f"mome.query_layer={self.query_layer} must be a layer index >= 0, or -1 for the block of the "
                "first expert site"
            )
        if self.balance not in ("batchnorm", "none"):
            raise UserError(f"mome.balance={self.balance!r} is unknown; choose 'batchnorm' or 'none'")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"mome.dtype={self.dtype!r} is unknown; choose 'float32' or 'bfloat16'")
        for name, low, strict in (("temperature", 0, True), ("scale", 0, True), ("aux_weight", 0, False)):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > low if strict else value >= low)):
                raise UserError(
                    f"mome.{name}={value!r} must be a finite number {'>' if strict else '>='} {low}"
                )
        if not (math.isfinite(self.gate) and self.gate >= 0):
            raise UserError(f"gate={self.gate} must be >= 0 (0 = off, 0.5 = half the typical fact spacing)")
        if self.gate > 0 and self.per_token:
            raise UserError(
                f"mome.gate={self.gate} works with per-question routing only; set per_token false or gate 0"
            )


# hparams of MoME checkpoints hold these configs; they are loaded with torch.load(weights_only=True)
torch.serialization.add_safe_globals([MoMEConfig, IndexConfig])


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
        self._question_mask: torch.Tensor | None = None
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._call_mask: torch.Tensor | None = None
        self._decoding = False
        backbone.register_forward_pre_hook(self._record_call, with_kwargs=True)
        layers[self.query_layer].register_forward_pre_hook(self._route, with_kwargs=True)

    # ------------------------------------------------------------------------------------ hooks
    def _record_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._call_mask = kwargs.get("attention_mask")
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # the name depends on transformers
        self._decoding = past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0

    def _route(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self.routing
        if not state.enabled:
            return
        if self._fixed is not None:
            state.ids, state.weights = self._fixed
            return
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H)
        if self._decoding and state.ids is not None and not self.config.per_token:
            if state.ids.shape[0] == hidden.shape[0]:
                return  # keep the prompt's routing for cached decode steps
        mask = self._question_mask
        if mask is None and self._call_mask is not None and self._call_mask.shape == hidden.shape[:2]:
            mask = self._call_mask
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
            question_mask: ``(B, T)`` tokens the router pools over (default: ``attention_mask``).
            expert_ids: ``(B, K)`` cached selection (phase 2); skips the router.
            expert_weights: ``(B, K)`` their weights (uniform ``1/K`` when None).
            **kwargs: passed to the backbone (``labels``, ``past_key_values``, ``output_hidden_states``...).
        """
        if expert_ids is not None:
            if expert_weights is None:
                expert_weights = torch.full(
                    expert_ids.shape, 1.0 / expert_ids.shape[-1], device=expert_ids.device
                )
            self._fixed = (expert_ids, expert_weights)
            self.routing.ids, self.routing.weights = self._fixed
        self._question_mask = question_mask
        try:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self._question_mask = None
            self._fixed = None

    @torch.no_grad()
    def route(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
    ) -> Routing:
        """Routing of a batch without the LM head (runs the blocks up to ``query_layer`` only)."""

        class _Stop(Exception):
            pass

        def stop(module, args, kwargs):
            raise _Stop

        layers = find_decoder_layers(self.backbone)
        handle = layers[self.query_layer].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.forward(input_ids, attention_mask=attention_mask, question_mask=question_mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        return self.last_routing

    # ------------------------------------------------------------------------------------ HF-style access
    @property
    def hf_config(self):
        """The backbone's HF config."""
        return self.backbone.config

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def as_causal_lm(self) -> nn.Module:
        """This model with HF's causal-LM interface, routed on the prompt (``decoding.generate`` runs it)."""
        from memexp.model_view import RoutedLM

        return RoutedLM(self)

    def generate(self, *args, **kwargs):
        """``backbone.generate`` with experts routed on the prompt (decode steps reuse its routing)."""
        return self.backbone.generate(*args, **kwargs)

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
