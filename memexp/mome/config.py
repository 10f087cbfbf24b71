"""``MoMEConfig``: the shape of the expert bank and router, and how a question is found in an input."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from decoding.errors import UserError
from memexp.mome.index import IndexConfig
from memexp.mome.layer import check_bank_size


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
            input gets exactly the backbone (:mod:`memexp.mome.gate`; per-question routing only).
        snap: snap radius relative to the same spacing (0 = off, the default): a question whose query lies
            within it of a memorised fact's query selects exactly that fact's experts and weights instead
            of its own top-k, so a reworded question gets its fact's whole expert set
            (:mod:`memexp.mome.gate`; per-question routing only; the facts' queries are stored at phase-2
            start whenever ``gate`` or ``snap`` is > 0; ``inf`` snaps every question to its nearest fact).
            Independent of ``gate``: with the gate on, a question outside the gate radius still gets no
            experts.
        question_end: token ids that end every trained question (the prompt template's tail, e.g. the
            ids of ``"\nA:"``); :class:`~memexp.mome.tuning.MoMETuning` records them from its facts. A
            forward without ``question_mask`` routes on the tokens up to and including their first
            occurrence, so prompt + answer routes like the prompt alone (:mod:`memexp.mome.question`).
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
    snap: float = 0.0
    question_end: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
        if self.question_end is not None and (
            isinstance(self.question_end, (str, bytes))
            or not self.question_end
            or not all(isinstance(t, int) and t >= 0 for t in self.question_end)
        ):
            raise UserError(
                f"mome.question_end={self.question_end!r} must be a non-empty list of token ids (the ids "
                "that end every question, e.g. those of '\\nA:'), or null to pass question_mask explicitly"
            )
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
        if not self.snap >= 0:  # also refuses nan; inf snaps every question to its nearest fact
            raise UserError(
                f"snap={self.snap} must be >= 0 (0 = off, 0.5 = half the typical fact spacing, inf = always)"
            )
        for name in ("gate", "snap"):
            if getattr(self, name) > 0 and self.per_token:
                raise UserError(
                    f"mome.{name}={getattr(self, name)} works with per-question routing only; set per_token "
                    f"false or {name} 0"
                )


# hparams of MoME checkpoints hold these configs; they are loaded with torch.load(weights_only=True).
# Checkpoints written before the move into memexp/mome/ name them by their old modules.
torch.serialization.add_safe_globals(
    [
        MoMEConfig,
        IndexConfig,
        (MoMEConfig, "memexp.mome.MoMEConfig"),
        (IndexConfig, "memexp.index.IndexConfig"),
    ]
)
