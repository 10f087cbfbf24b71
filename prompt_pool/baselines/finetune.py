"""Sequential fine-tuning of a ViT classifier ([CLS] feature -> linear head)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from decoding.layers import LayerLogits
from prompt_pool.heads import class_layer_logits
from prompt_pool.learner import ContinualLearner
from prompt_pool.query_cache import QueryCache


class FineTune(ContinualLearner):
    """[CLS] after the final norm -> linear head; the backbone trains only if ``train_backbone``.

    Args:
        train_backbone: fine-tune the whole ViT (False: head only, on frozen features).
        cache_features: with a frozen backbone, cache the per-sample [CLS] features (they are the L2P
            query, which never changes for deterministic inputs).
        **kwargs: :class:`ContinualLearner` arguments.
    """

    def __init__(self, train_backbone: bool = False, cache_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if train_backbone:
            self.backbone.unfreeze()
        self.save_hyperparameters()
        self.train_backbone = train_backbone
        self.cache_features = cache_features and not train_backbone
        self.head = nn.Linear(self.backbone.embed_dim, self.num_classes)
        self.feature_cache = QueryCache()

    def features(self, x: Tensor, uid: Tensor | None = None) -> Tensor:
        """[CLS] feature (B, D)."""
        if not self.train_backbone:
            if self.cache_features and uid is not None:
                return self.feature_cache.get(uid, x, self.backbone.query)
            return self.backbone.query(x)
        return self.backbone.pooled_features(x, None, "cls")[-1]

    def logits(self, x: Tensor, uid: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.head(self.features(x, uid)), {}

    @torch.no_grad()
    def layer_logits(self, x: Tensor, uid: Tensor | None = None) -> LayerLogits:
        """Per-layer class logits through the final norm and the head: early (N, B, C) from hidden
        states 0..N-1, mature (B, C) = :meth:`logits` (the same call, so bit-identical)."""
        mature, _ = self.logits(x, uid)  # (B, C)
        feats = self.backbone.layer_features(x, None, "cls")  # (N + 1, B, D)
        return class_layer_logits(self.head(feats[:-1]), mature, self.backbone.depth)
