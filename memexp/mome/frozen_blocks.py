"""Train and validate a memory-expert model through the frozen-layer cache (:mod:`memexp.layer_cache`).

::

    fact ids -> LayerCache (input of block `cut`, built once per fit) -> blocks cut..N-1 with experts
             -> final norm + LM head at the answer positions only -> (N, V)

``cut`` is the lowest expert site (the router's query layer with per-token routing). Training uses the
cached phase-2 selection (or routes the cached pooled features in phase 1). Validation routes as inference
does: the real router, fact gate and index on the cached question features, so its per-fact columns are
the full model's (:func:`memexp.fact_eval.answer_columns`, the one evaluation code) at the cost of the
blocks above the cut. Facts the cache does not hold (held-out facts), extra decoding heads (they read
layers below the cut) and evaluations outside ``fit`` take the full forward
(:func:`memexp.fact_eval.evaluate_batch`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.trainer.states import TrainerFn

from memexp.answer_logits import answer_positions
from memexp.fact_eval import answer_columns
from memexp.layer_cache import LayerCache, cache_fingerprint, decoder_parts, head_at, run_layers
from memexp.mome.router import masked_mean


class FrozenBlocks:
    """Mixin of :class:`memexp.mome.MoMETuning`: the cached forward for training and validation.

    Expects ``self.model`` (a :class:`memexp.mome.MoMEModel`), ``self.layer_cache`` (None until built),
    the ``cache_frozen_layers`` and ``layer_cache_dir`` hparams and a trainer with a facts data module.
    """

    def evaluate(self, batch: dict[str, torch.Tensor], heads: dict | None) -> dict[str, torch.Tensor]:
        """Per-fact columns of one facts batch; through the cache when it holds the batch's facts."""
        if heads or not self._cache_evaluates(batch):
            return super().evaluate(batch, heads)
        keep = answer_positions(batch["labels"])  # (B, T)
        logits = self._cached_forward(batch, {}, keep)  # (N, V): routed by the real router and index
        return {"fact_id": batch["fact_ids"], **answer_columns(logits, batch["labels"])}

    def _cache_evaluates(self, batch: dict[str, torch.Tensor]) -> bool:
        """Whether this fit's layer cache holds every fact of ``batch`` as tokenised there."""
        if not self.hparams.cache_frozen_layers or not self.model.routing.enabled:
            return False
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return False  # the cache holds this fit's training facts only
        lengths = batch["attention_mask"].sum(1)  # (B,)
        return self._frozen_cache().covers(batch["fact_ids"], lengths)

    def _cached_forward(
        self, batch: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], keep: torch.Tensor
    ) -> torch.Tensor:
        """Answer logits ``(N, V)`` from the cached frozen blocks: only the blocks with experts run."""
        mome, cache = self.model, self._frozen_cache()
        parts = decoder_parts(mome.backbone)
        hidden = cache.lookup(batch["fact_ids"], batch["input_ids"].shape[1])  # (B, T, H)
        fixed = None
        if extra:  # phase 2: the cached selection
            fixed = (extra["expert_ids"], extra["expert_weights"])
        elif cache.features is not None:  # phase 1 or evaluation: the router on the cached query features
            routing = mome.router.route_features(cache.pooled(batch["fact_ids"]))
            mome.last_routing = routing
            fixed = (routing.ids, routing.weights)
        if fixed is not None:
            planned = mome.selected(*fixed)
        else:  # the query layer is the cut: its hook routes the cached hidden states
            plan = mome.plan(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"])
            planned = mome._planned(plan)
        with planned:
            upper = run_layers(parts, hidden, batch["attention_mask"], cache.cut, len(parts.layers))
        return head_at(parts, upper, keep)

    def _frozen_cache(self) -> LayerCache:
        """The layer cache of the training facts: built on first use, or read from ``layer_cache_dir``."""
        if self.layer_cache is not None:
            return self.layer_cache
        mome = self.model
        cut = mome.query_layer if mome.config.per_token else mome.first_site_layer
        pool_layer = mome.query_layer if mome.query_layer < cut else None
        examples = self.trainer.datamodule.train_examples
        fingerprint = cache_fingerprint(
            mome.backbone, cut, [(e.fact_id, e.prompt_ids + e.answer_ids) for e in examples]
        )
        path = None
        if self.hparams.layer_cache_dir:
            path = Path(self.hparams.layer_cache_dir) / f"layer_cache-{fingerprint}.pt"
            self.layer_cache = LayerCache.load(path, fingerprint, device=self.device)
        if self.layer_cache is None:
            with mome.experts_off():
                self.layer_cache = LayerCache.build(
                    mome.backbone,
                    self._fact_batches(examples),
                    cut,
                    pool_layer,
                    pool=lambda hidden, batch: masked_mean(hidden, batch["prompt_mask"]),
                    fingerprint=fingerprint,
                )
            if path is not None and self.global_rank == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.layer_cache.save(path)
        return self.layer_cache
