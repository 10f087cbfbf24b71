"""L2P (Wang et al., CVPR 2022): a prompt pool on a frozen ViT, trained task after task.

    q = frozen_vit(x)[CLS]              (cached per sample when inputs are deterministic)
    sel = pool(q)                       ids (B,N), prompts (B, N*Lp, D), pull
    h = frozen_vit.blocks([prompts; CLS; patches]) -> norm
    logits = head(mean(h[:, :N*Lp]))   ('prompt' head; 'cls' uses h[:, N*Lp])
    loss = CE(train_mask(logits), y) - pull_coef * pull

Only the prompts, the keys and the head are trainable (and hold optimiser state).

Decoding heads on a classifier (``eval_heads``; :mod:`prompt_pool.heads`). :meth:`L2P.layer_logits`
returns per-layer class logits: hidden state l (0 = embedding output with the prompts, l = output of
block l) goes through the final norm, the same pooling and the head (a "logit lens"). On these:

- DoLa contrasts the last layer's log-probabilities with a premature layer's.
- SLED treats the per-layer logits as evidence about the latent "true" class distribution and moves
  the final logits a step toward it (self-logits evolution over the C classes instead of a vocabulary).
- DeRa interpolates between the prompted model and a reference. For L2P the natural reference is the
  *same* backbone without prompts: :meth:`L2P.reference_layer_logits` applies the head to the
  prompt-free query feature q(x) (free: it is computed anyway) and, for a layer-wise inner head, to
  every prompt-free hidden state's [CLS]. DeRa(lam) = ref + lam * (prompted - ref).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from decoding.errors import UserError
from decoding.layers import LayerLogits
from prompt_pool.backbone import HeadType
from prompt_pool.heads import class_layer_logits
from prompt_pool.learner import ContinualLearner
from prompt_pool.pool import PoolConfig, PromptPool
from prompt_pool.query_cache import QueryCache


class L2P(ContinualLearner):
    """L2P learner (its DeRa reference is the prompt-free model).

    Args:
        pool: the prompt pool (M, Lp, N, init, selection rules), :class:`~prompt_pool.pool.PoolConfig`.
        pull_coef: lambda of the pull constraint (paper 0.5; JAX CIFAR 1.0; l2p-pytorch CIFAR 0.1).
        head_type: ``prompt`` (mean of prompt outputs, paper) or ``cls``.
        head_init: ``zeros`` (JAX kernel init) or ``default`` (PyTorch Linear init).
        cache_queries: reuse per-sample frozen query features (only for deterministic inputs).
        **kwargs: :class:`ContinualLearner` arguments (backbone, lr, batch_size, train_mask, eval_heads...).
    """

    has_reference = True

    def __init__(
        self,
        pool: PoolConfig = PoolConfig(),  # frozen dataclass: a safe default
        pull_coef: float = 0.5,
        head_type: HeadType = "prompt",
        head_init: Literal["zeros", "default"] = "zeros",
        cache_queries: bool = True,
        **kwargs: Any,
    ) -> None:
        pool.check()  # before the ViT
        if not pull_coef >= 0:
            raise UserError(f"pull_coef must be >= 0, got {pull_coef}; pass --model.init_args.pull_coef 0.5.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        d = self.backbone.embed_dim
        self.pool = PromptPool(pool, d, seed=self.seed)
        self.head = nn.Linear(d, self.num_classes)
        if head_init == "zeros":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif head_init != "default":
            raise UserError(f"unknown head_init {head_init!r}; use 'zeros' or 'default'.")
        self.pull_coef, self.head_type, self.cache_queries = pull_coef, head_type, cache_queries
        self.query_cache = QueryCache()
        self.num_prompts = pool.pool_size  # training steps return the selected ids (usage tracking)

    def begin_task(self, task: int, classes: list[int]) -> None:
        super().begin_task(task, classes)
        self.pool.begin_task(task)

    def query(self, x: Tensor, uid: Tensor | None = None) -> Tensor:
        """Frozen prompt-free [CLS] feature (B, D), from the cache when allowed."""
        if self.cache_queries and uid is not None:
            return self.query_cache.get(uid, x, self.backbone.query)
        return self.backbone.query(x)

    def forward_features(
        self, x: Tensor, uid: Tensor | None = None, query: Tensor | None = None, all_layers: bool = False
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Pooled features of the prompted forward (one (B, D) per layer if ``all_layers``) and aux."""
        q = self.query(x, uid) if query is None else query  # (B, D)
        sel = self.pool(q)
        feats = self.backbone.pooled_features(x, sel.prompts, self.head_type, all_layers)  # [(B, D)]
        return feats, {"pull": sel.pull, "ids": sel.ids, "query": q}

    def logits(self, x: Tensor, uid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        feats, aux = self.forward_features(x, uid)
        return self.head(feats[-1]), aux  # (B, C)

    def extra_loss(self, x: Tensor, y: Tensor, logits: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """- pull_coef * mean_b sum_{j in ids_b} cos(q_b, k_j)."""
        return -self.pull_coef * aux["pull"]

    @torch.no_grad()
    def layer_logits(self, x: Tensor, uid: Tensor | None = None) -> LayerLogits:
        """Per-layer class logits (no usage recorded): early (N, B, C) from hidden states 0..N-1, mature
        (B, C) computed by the same operations as :meth:`logits` (bit-identical)."""
        feats = self.layer_features(x, uid)  # [(B, D)] * (N + 1)
        early = self.head(torch.stack(feats[:-1]))  # (N, B, C): one GEMM for all early layers
        return class_layer_logits(early, self.head(feats[-1]), self.backbone.depth)

    @torch.no_grad()
    def layer_features(self, x: Tensor, uid: Tensor | None = None) -> list[Tensor]:
        """Pooled features of hidden states 0..N of the prompted forward, [(B, D)] * (N + 1)."""
        was = self.pool.training
        self.pool.eval()
        feats, _ = self.forward_features(x, uid, all_layers=True)
        self.pool.train(was)
        return feats

    @torch.no_grad()
    def reference_layer_logits(self, x: Tensor, uid: Tensor | None = None, early: bool = True) -> LayerLogits:
        """DeRa's reference, the prompt-free model: the same head on the frozen ViT's [CLS] without
        prompts; mature (B, C) on the query feature q(x), early (N, B, C) only when ``early``."""
        mature = self.reference_logits(x, uid)  # (B, C)
        if not early:
            return class_layer_logits(None, mature, self.backbone.depth)
        feats = self.backbone.layer_features(x, None, "cls")  # (N + 1, B, D)
        return class_layer_logits(self.head(feats[:-1]), mature, self.backbone.depth)

    @torch.no_grad()
    def reference_logits(self, x: Tensor, uid: Tensor | None = None) -> Tensor:
        """DeRa reference: the head on the prompt-free query feature.  -> (B, C)."""
        return self.head(self.query(x, uid))
