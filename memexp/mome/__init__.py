"""Memory experts (MoME) on a frozen backbone, laid out like one peft method.

=================  ==================================================================================
``config``         :class:`MoMEConfig`: bank, router and the trained question format
``model``          :class:`MoMEModel` (backbone + expert sites + router), routing plans, ``generate``
``question``       which tokens are the question when no ``question_mask`` is given
``layer``          :class:`ExpertLinear`: stacked expert tables, gather + bmm
``router``         :class:`Router`: query, candidate search, differentiable re-scoring
``index``          :class:`KeyIndex`, :class:`IndexConfig`: exact or FAISS key search
``gate``           :class:`FactGate`: experts only near a memorised question
``sites``          which linears carry experts; :func:`experts_off`
``checkpoint``     :func:`save_mome` / :func:`load_mome`: one folder on top of a named backbone
``tuning``         :class:`MoMETuning`: the two-phase Lightning module
``usage_plot``     :class:`ExpertUsagePlot`: facts-per-expert histogram at the end of fit
``ddp_sparse``     DDP all-reduce hook for the sparse expert gradients
=================  ==================================================================================
"""

from memexp.mome.checkpoint import load_mome, save_mome
from memexp.mome.config import MoMEConfig
from memexp.mome.gate import FactGate
from memexp.mome.index import IndexConfig, KeyIndex, exact_topk, recall_at_k
from memexp.mome.layer import ExpertLinear, RoutingState
from memexp.mome.model import MoMEModel, RoutingPlan
from memexp.mome.question import find_question
from memexp.mome.router import Router, Routing, collision_stats
from memexp.mome.sites import experts_off, find_decoder_layers, inject_experts, match_sites
from memexp.mome.tuning import MoMETuning
from memexp.mome.usage_plot import ExpertUsagePlot

__all__ = [
    "ExpertLinear",
    "ExpertUsagePlot",
    "FactGate",
    "IndexConfig",
    "KeyIndex",
    "MoMEConfig",
    "MoMEModel",
    "MoMETuning",
    "Router",
    "Routing",
    "RoutingPlan",
    "RoutingState",
    "collision_stats",
    "exact_topk",
    "experts_off",
    "find_decoder_layers",
    "find_question",
    "inject_experts",
    "load_mome",
    "match_sites",
    "recall_at_k",
    "save_mome",
]
