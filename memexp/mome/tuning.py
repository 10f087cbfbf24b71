"""``MoMETuning``: memorise facts in a bank of memory experts on a frozen backbone, in two phases.

::

    memexp fit --config configs/memexp/mome_demo.yaml

Phase 1 (epochs ``0 .. phase1_epochs-1``): router (query projection, keys) and experts train together;
candidate search is exact on the live keys; the query-decorrelation loss (``aux_weight``) and query
batch-norm push distinct facts toward distinct experts.

Phase 2 (from epoch ``phase1_epochs``): the facts' queries are whitened (``whiten_queries``), the router
is frozen, with ``balance_keys`` each fact gets experts of its own (their keys move onto its query), the fact
gate is fitted when ``mome.gate > 0`` (:mod:`memexp.mome.gate`), the configured index is built once over the
frozen keys (its recall@k against exact search is logged), every training fact's expert ids and weights
are cached, and only the selected expert rows train. A fact leaves training once its summed answer NLL
falls below ``stop_nll`` (ln 2 guarantees greedy exact match); a fact that validation finds not recalled
exactly comes back.

With ``cache_frozen_layers`` the blocks below the lowest expert site run once per fact
(:mod:`memexp.layer_cache`) and every training step runs only the blocks above; the LM head always runs
at answer positions only (:mod:`memexp.answer_logits`).

Evaluation, per-fact records and held-out metrics are the foundation's
(:class:`memexp.fact_tuning.FactTuning`). Validation of cached training facts runs only the blocks above the
cut, routed as inference routes (router, gate, index; :mod:`memexp.mome.frozen_blocks`); held-out facts,
extra heads and evaluations outside ``fit`` run the full model.
Checkpoints hold only the MoME weights and the cache; at the end of ``fit`` the experts are also written
as a MoME folder (:func:`memexp.mome.checkpoint.save_mome`) in ``<default_root_dir>/mome``.

Optimisers: ``row_adam`` or ``sparse_adam`` on the sparse tables and keys, ``AdamW`` on the dense query
projection; only touched rows move. ``row_adam`` (:mod:`memexp.mome.row_adam`) bias-corrects each row with
its own step count; torch's ``SparseAdam`` counts every step, so a fact's experts, selected once per epoch,
take steps several times ``lr`` for their first hundreds of updates. Dense: ``adamw`` or ``adafactor``
(every step touches the whole bank; fine for small banks). Training uses Lightning manual optimisation
because the sparse and dense parameter groups need different optimisers.

Deliberate difference (docs/algorithms/mome.md): memorised facts are removed from each batch before the
forward pass (the data module's sampler is not replaced), which keeps every DDP rank in lock-step.
"""

from __future__ import annotations

import dataclasses
import math
import string
from pathlib import Path
from typing import Literal, get_args

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from decoding.errors import UserError
from memexp.answer_logits import answer_positions, summed_answer_nll
from memexp.compact_state import compact_optimizer_states
from memexp.data import collate_examples
from memexp.fact_tuning import FactTuning, check_number, parse_eval_heads
from memexp.layer_cache import LayerCache, decoder_parts
from memexp.mome.checkpoint import save_mome
from memexp.mome.config import MoMEConfig
from memexp.mome.ddp_sparse import register_sparse_allreduce_hook
from memexp.mome.expert_balance import place_keys, random_assignment, usage_report, warn_if_shared
from memexp.mome.frozen_blocks import FrozenBlocks
from memexp.mome.index import IndexConfig, exact_topk, recall_at_k
from memexp.mome.model import MoMEModel
from memexp.mome.question import common_question_end
from memexp.mome.retain import RetainSet, check_retain, retain_examples
from memexp.mome.router import collision_stats
from memexp.mome.row_adam import RowAdam
from memexp.mome.usage_plot import ExpertUsagePlot

MoMEOptimizer = Literal["row_adam", "sparse_adam", "adamw", "adafactor"]
SPARSE_OPTIMIZERS = {"row_adam": RowAdam, "sparse_adam": torch.optim.SparseAdam}


class MoMETuning(FrozenBlocks, FactTuning):
    """Two-phase memory-expert tuning of a frozen backbone.

    Args:
        backbone: model folder, hub id or ``tiny:`` name.
        mome: bank and router settings (:class:`memexp.mome.MoMEConfig`); its ``index`` is the phase-2
            index (phase 1 always searches exactly).
        phase1_epochs: epochs of joint router + expert training (0 skips phase 1).
        lr: learning rate of the expert tables.
        router_lr: learning rate of query projection and keys (phase 1).
        weight_decay: decoupled weight decay of dense optimisers.
        optimizer: ``row_adam`` (lazy Adam bias-corrected per row, :mod:`memexp.mome.row_adam`),
            ``sparse_adam`` (torch's ``SparseAdam``), ``adamw`` or ``adafactor``.
        stop_nll: a fact leaves training when its summed answer NLL (nats) is below this (<= 0 disables).
        recall_queries: facts whose queries measure the phase-2 index's recall@k (0 disables).
        whiten_queries: at phase-2 start, fold a whitening of the facts' queries into the frozen query
            projection so distinct facts select distinct experts (:meth:`Router.whiten
            <memexp.mome.router.Router.whiten>`).
        whiten_shrink: ridge of that whitening relative to the mean query variance (0 = the plain
            whitening, eps 1e-6); e.g. 0.1 keeps a reworded question nearer its own fact's query
            (docs/algorithms/mome.md, "Routing under paraphrase"). Only used with ``whiten_queries``.
        balance_keys: at phase-2 start, give each fact (and head) its own experts and move their keys
            onto its query (:func:`memexp.mome.expert_balance.place_keys`; per-question routing only): no
            two facts share an expert while the bank has ``heads * k`` experts per fact, and at most
            ``ceil(facts * heads * k / E)`` share one otherwise. Off by default until its effect on
            the time to 0% is measured (docs/memexp.md).
        cache_frozen_layers: compute the blocks below the lowest expert site once per fact and train
            only the blocks above (:mod:`memexp.layer_cache`); the router's pooled query features come
            from the cache too when ``mome.query_layer`` lies below that block. Llama-family backbones.
        layer_cache_dir: also keep that cache on disk here, one file per fingerprint (backbone prefix +
            tokenised facts), reused by later runs; memory only when None.
        dtype: backbone dtype.
        seed: base seed.
        eval_heads: extra decoding heads whose hallucination rate is logged as
            ``val/hallucination_rate/<spec>`` (as :class:`~memexp.fact_tuning.FactTuning`); DeRa's reference
            is the backbone with the experts off.
        retain_weight: weight of the phase-2 retain loss, KL(backbone || routed model) on inputs that ask
            no memorised fact, routed with the gate open (:mod:`memexp.mome.retain`); 0 turns it off.
        retain_questions: random-fact questions about other entities than the data's facts, as retain inputs.
        retain_chunks: chunks of the shipped retain prose (``memexp/data/retain_text.txt``) as retain inputs.
        retain_chunk_len: tokens per retain prose chunk.
        retain_batch: retain rows per training step.
        retain_positions: compared positions per retain row and step (sampled).
    """

    export_name = "mome"  # ResultsWriter exports into <default_root_dir>/mome

    def __init__(
        self,
        backbone: str = "tiny:llama",
        mome: MoMEConfig | None = None,
        phase1_epochs: int = 1,
        lr: float = 1e-2,
        router_lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: MoMEOptimizer = "sparse_adam",
        stop_nll: float = math.log(2),
        recall_queries: int = 256,
        whiten_queries: bool = True,
        whiten_shrink: float = 0.0,
        balance_keys: bool = False,
        cache_frozen_layers: bool = True,
        layer_cache_dir: str | None = None,
        dtype: str | None = None,
        seed: int = 0,
        eval_heads: list[str] | None = None,
        retain_weight: float = 0.0,
        retain_questions: int = 0,
        retain_chunks: int = 0,
        retain_chunk_len: int = 64,
        retain_batch: int = 16,
        retain_positions: int = 16,
    ) -> None:
        heads = parse_eval_heads(eval_heads)  # checked first; the reference is experts off (no weight copy)
        # the MoME settings are checked before the backbone is loaded (mome checks itself: MoMEConfig)
        if optimizer not in get_args(MoMEOptimizer):
            raise UserError(
                f"optimizer={optimizer!r} is unknown; choose row_adam, sparse_adam, adamw or adafactor"
            )
        if phase1_epochs < 0:
            raise UserError(f"phase1_epochs={phase1_epochs} must be >= 0 (0 skips the router phase)")
        check_number("router_lr", router_lr, fix="the router's learning rate, e.g. 1e-3")
        check_number("whiten_shrink", whiten_shrink, strict=False, fix="0 = plain whitening, e.g. 0.1")
        check_number("stop_nll", stop_nll, low=-math.inf, fix="use ln 2 = 0.693, or 0 to keep every fact")
        check_retain(
            retain_weight, retain_questions, retain_chunks, retain_chunk_len, retain_batch, retain_positions
        )
        if recall_queries < 0:
            raise UserError(f"recall_queries={recall_queries} must be >= 0 (0 skips the index recall)")
        if mome is not None and not isinstance(mome, MoMEConfig):
            raise UserError(
                f"mome must be a MoMEConfig (or its fields as a mapping), got {type(mome).__name__}"
            )
        super().__init__(
            backbone=backbone, method="full", lr=lr, weight_decay=weight_decay, dtype=dtype, seed=seed
        )
        config = dataclasses.replace(mome or MoMEConfig())  # hparams keep the user's config untouched
        config.sparse = optimizer in SPARSE_OPTIMIZERS
        self.phase2_index = config.index
        config.index = IndexConfig(kind="exact")  # phase 1 searches the live keys
        self.model = MoMEModel(self.model, config)
        self.eval_heads = heads
        self.automatic_optimization = False
        self.strict_loading = False
        self.register_buffer("cached_ids", torch.zeros(0, config.k * config.heads, dtype=torch.long))
        self.register_buffer("cached_weights", torch.zeros(0, config.k * config.heads))
        self.register_buffer("memorised", torch.zeros(0, dtype=torch.bool))
        self.layer_cache: LayerCache | None = None
        self.retain: RetainSet | None = None  # built at the first phase-2 step of a fit
        if cache_frozen_layers:
            decoder_parts(self.model.backbone)  # refuse other architectures now, not at the first step

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._record_question_end()

    def _record_question_end(self) -> None:
        """Record the ids that end every trained prompt as ``mome.question_end`` (the data's template
        tail, tokenised in context), so a forward without ``question_mask`` finds the question."""
        dm = getattr(self.trainer, "datamodule", None)
        examples = getattr(dm, "train_examples", None)
        if not examples or getattr(dm, "tokenizer", None) is None:
            return
        prompts = [e.prompt_ids for e in examples]
        config = self.model.config
        given = getattr(self.hparams.get("mome"), "question_end", None)  # set by the user: checked, kept
        if given is not None:
            end = list(given)
            if any(list(p[-len(end) :]) != end for p in prompts):
                raise UserError(
                    f"mome.question_end={end} does not end every training prompt; set it to null so it is "
                    "taken from data.template"
                )
            return
        parts = list(string.Formatter().parse(dm.hparams.template))
        field = next(i for i, part in enumerate(parts) if part[1] == "question")
        tail = "".join(part[0] for part in parts[field + 1 :])  # the literal text after {question}
        tail_ids = dm.tokenizer(tail, add_special_tokens=False).input_ids if tail else []
        config.question_end = common_question_end(prompts, tail_ids)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.layer_cache = None  # built for this fit's facts on first use (another fit may bring others)
        self.retain = None
        ddp = self.trainer.strategy.model
        if self.model.config.sparse and isinstance(ddp, DistributedDataParallel):
            register_sparse_allreduce_hook(ddp)  # not gloo's sparse all-reduce: see memexp.mome.ddp_sparse

    # ---- phases -------------------------------------------------------------------------------
    @property
    def in_phase2(self) -> bool:
        return self.current_epoch >= self.hparams.phase1_epochs

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.in_phase2 and self.cached_ids.shape[0] == 0:
            self.start_phase2()
        self._ensure_index()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._ensure_index()

    def _ensure_index(self) -> None:
        """After a resume in phase 2 the index is rebuilt from the restored (frozen) keys."""
        index = self.model.router.index
        if self.cached_ids.shape[0] > 0 and index.fingerprint is None:
            index.build(self.model.router.keys.weight)

    @torch.no_grad()
    def start_phase2(self) -> None:
        """Freeze the router, build the phase-2 index, cache each fact's experts and log usage.

        The facts' question features are read once (a routing-only pass per batch); whitening,
        batch-norm calibration and the cached selection are computed from them by the router.
        """
        mome = self.model
        router = mome.router
        examples = self.trainer.datamodule.train_examples
        features = [  # (B, H) pooled question features per batch, in example order
            mome.route(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"]).features
            for batch in self._fact_batches(examples)
        ]
        # rewordings of a fact (Example.source_id, memexp.paraphrase.TRAIN_TEMPLATES) share its experts:
        # the router is fitted on the facts' own questions only and a rewording caches its fact's selection
        row = {e.fact_id: i for i, e in enumerate(examples)}
        source = torch.tensor([row[e.fact_id if e.source_id is None else e.source_id] for e in examples])
        own = source == torch.arange(len(examples))  # (N,) the facts' own questions
        own_features = [torch.cat(features)[own.to(features[0].device)]] if not own.all() else features
        if self.hparams.whiten_queries:
            router.whiten(own_features, shrink=self.hparams.whiten_shrink)
        router.calibrate_norm(own_features)
        self._freeze_router()
        keys = router.keys.weight
        if self.hparams.balance_keys and not mome.config.per_token:
            fact_queries = torch.cat([router.make_queries(f) for f in own_features])  # (F, heads, d_k)
            rows = fact_queries.reshape(-1, mome.config.key_dim)  # (F * heads, d_k)
            warn_if_shared(rows.shape[0], mome.config.k, mome.config.num_experts)
            place_keys(rows, keys, mome.config.k)
        router.index.config = self.phase2_index
        router.index.build(keys)
        gate = router.gate
        gate.fit(gate.queries[:0], 0.0)  # no snapping while the facts' own selection is computed
        routed = [router.route_features(f) for f in features]  # frozen: what route() gives each fact
        source = source.to(self.device)
        routing_ids = torch.cat([r.ids for r in routed])[source]  # (N, heads * k)
        queries = torch.cat([r.queries for r in routed]).flatten(1)  # (N, heads * d_k)
        fact_ids = torch.tensor([e.fact_id for e in examples], device=self.device)
        n_ids = int(fact_ids.max()) + 1
        ids = torch.zeros(n_ids, self.cached_ids.shape[1], dtype=torch.long, device=self.device)
        weights = torch.zeros(n_ids, self.cached_ids.shape[1], device=self.device)
        ids[fact_ids], weights[fact_ids] = routing_ids, torch.cat([r.weights for r in routed])[source]
        self.cached_ids, self.cached_weights = ids, weights
        if (mome.config.gate > 0 or mome.config.snap > 0) and not mome.config.per_token:
            gate.fit(queries[own.to(queries.device)], mome.config.gate, mome.config.snap)
        self.memorised = torch.zeros(n_ids, dtype=torch.bool, device=self.device)
        fact_ids = fact_ids[own.to(self.device)]  # usage of the facts' own selections
        stats = collision_stats(ids[fact_ids], mome.config.num_experts)
        chance = random_assignment(len(fact_ids), ids.shape[1], mome.config.num_experts)
        metrics = {
            "mome/collision_rate": stats["collision_rate"],
            "mome/distinct_experts": stats["distinct_experts"],
            "mome/distinct_experts_random": chance["distinct_experts"],
            "mome/sharing_all": usage_report(ids[fact_ids], mome.config.num_experts)["sharing_all"],
            "mome/max_usage": stats["max_usage"],
        }
        q = queries.reshape(-1, mome.config.key_dim)[: self.hparams.recall_queries]
        if q.shape[0]:
            _, approx = router.index.search(q, mome.config.k)
            metrics["mome/index_recall"] = recall_at_k(approx, exact_topk(q, keys, mome.config.k)[1])
        self.usage = stats["usage"]  # (E,) facts per expert, drawn by ExpertUsagePlot at the end of fit
        for name, value in metrics.items():
            self.log(name, float(value), rank_zero_only=True)

    def _fact_batches(self, examples: list):
        """All training facts in order, collated like the data module does, on this device."""
        dm = self.trainer.datamodule
        size = dm.hparams.eval_batch_size
        for start in range(0, len(examples), size):
            batch = collate_examples(examples[start : start + size], dm.tokenizer.pad_token_id)
            yield {k: v.to(self.device) for k, v in batch.items()}

    # ---- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the routed model (router + index, as at inference)."""
        return self.model(
            batch["input_ids"], attention_mask=batch["attention_mask"], question_mask=batch.get("prompt_mask")
        ).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        fact_ids = batch["fact_ids"]
        extra = {}
        # per answer token of the whole batch, memorised facts included: a fact's gradient does not grow
        # when its batch-mates are memorised and leave (that jolts Adam's moments of its experts)
        tokens = answer_positions(batch["labels"]).sum().clamp_min(1)
        if self.in_phase2:
            active = ~self.memorised[fact_ids]
            weight = 1.0
            if not active.any():  # keep DDP ranks in lock-step: one row, zero loss weight
                active[0], weight = True, 0.0
            batch = {k: v[active] for k, v in batch.items()}
            fact_ids = batch["fact_ids"]
            extra = {"expert_ids": self.cached_ids[fact_ids], "expert_weights": self.cached_weights[fact_ids]}
        else:
            weight = 1.0
        keep = answer_positions(batch["labels"])  # (B, T): the LM head runs at answer positions only
        if self.hparams.cache_frozen_layers:
            logits = self._cached_forward(batch, extra, keep)
        else:
            logits = self.model(
                batch["input_ids"],
                attention_mask=batch["attention_mask"],
                question_mask=batch["prompt_mask"],
                logits_to_keep=keep,
                **extra,
            ).logits  # (N, V)
        nll = summed_answer_nll(logits, batch["labels"], keep)  # (B,)
        loss = weight * nll.sum() / tokens
        if not self.in_phase2 and self.model.last_routing is not None:
            loss = loss + self.model.last_routing.aux_loss
        if self.in_phase2 and getattr(self, "_touch_keys", False):
            loss = loss + 0.0 * self.model.router.keys(extra["expert_ids"]).sum()
        retain = self.in_phase2 and self.hparams.retain_weight > 0
        if retain:
            kl = self._retain_set().loss(self.model)
            loss = loss + self.hparams.retain_weight * kl
            self.log("train/retain_kl", kl.detach(), batch_size=1)
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(loss)
        anyone = torch.tensor(float(weight > 0 or retain), device=self.device)
        if self.trainer.world_size > 1:
            anyone = self.all_gather(anyone).max()
        if anyone > 0:  # Adam moments would move rows even on an all-zero gradient
            for opt in opts[:1] if self.in_phase2 else opts:
                opt.step()
        if self.in_phase2 and self.hparams.stop_nll > 0:
            done = torch.zeros_like(self.memorised, dtype=torch.uint8)
            if weight > 0:
                done[fact_ids[nll.detach() < self.hparams.stop_nll]] = 1
            if self.trainer.world_size > 1:  # every rank drops the same facts
                done = self.all_gather(done).reshape(-1, done.shape[0]).amax(0)
            self.memorised |= done.bool()
            self.log("train/active_facts", float((~self.memorised).sum()), batch_size=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _retain_set(self) -> RetainSet:
        """The retain inputs of this fit (:mod:`memexp.mome.retain`), built at first use in phase 2."""
        if self.retain is None:
            dm, hp = self.trainer.datamodule, self.hparams
            examples = retain_examples(
                dm.tokenizer,
                dm.hparams.template,
                dm.facts + dm.heldout_facts,
                hp.retain_questions,
                hp.retain_chunks,
                hp.retain_chunk_len,
                hp.seed,
            )
            pad = dm.tokenizer.pad_token_id
            seed = hp.seed + self.global_rank
            self.retain = RetainSet(self.model, examples, pad, hp.retain_positions, hp.retain_batch, seed)
        return self.retain

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        records = self.fact_records
        if records and self.memorised.numel():  # facts that validation does not recall come back
            missed = records["fact_id"][~records["exact"]].to(self.device)
            self.memorised[missed] = False

    def configure_optimizers(self):
        hp = self.hparams
        mome = self.model
        tables = mome.expert_parameters()
        keys = [mome.router.keys.weight]
        dense_router = [p for n, p in mome.router.named_parameters() if n != "keys.weight"]
        if hp.optimizer in SPARSE_OPTIMIZERS:
            sparse = SPARSE_OPTIMIZERS[hp.optimizer]
            return [  # the first one (expert tables) is the only one stepped in phase 2
                sparse(tables, lr=hp.lr),
                sparse(keys, lr=hp.router_lr),
                torch.optim.AdamW(dense_router, lr=hp.router_lr, weight_decay=hp.weight_decay),
            ]
        groups = [{"params": tables, "lr": hp.lr}, {"params": keys + dense_router, "lr": hp.router_lr}]
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        from transformers.optimization import Adafactor

        return Adafactor(
            groups, lr=hp.lr, weight_decay=hp.weight_decay, scale_parameter=False, relative_step=False
        )

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record what wrote the checkpoint; keep the MoME weights, buffers and cache (the backbone is
        referenced, not copied); SparseAdam moments keep only the rows of experts ever selected."""
        checkpoint["memexp"] = self.checkpoint_identity()
        compact_optimizer_states(checkpoint)
        keep = ("model.router.", "cached_ids", "cached_weights", "memorised")
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith(keep) or k.endswith((".A.weight", ".B.weight"))
        }

    def checkpoint_identity(self) -> dict:
        """Module, backbone and the bank's shape: what a resumed checkpoint must match."""
        cfg = self.model.config
        shape = ("num_experts", "k", "rank", "heads", "key_dim", "sites", "dtype", "per_token")
        return super().checkpoint_identity() | {"mome": {name: getattr(cfg, name) for name in shape}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        sd = checkpoint["state_dict"]
        for name in ("cached_ids", "cached_weights", "memorised"):
            if name in sd:
                setattr(self, name, torch.empty_like(sd[name]))
        if sd.get("cached_ids") is not None and sd["cached_ids"].shape[0] > 0:
            self._freeze_router()
            self.model.router.index.config = self.phase2_index

    def _freeze_router(self) -> None:
        """Freeze the router for phase 2.

        Under DDP the sparse key table keeps ``requires_grad`` and receives an all-zero gradient each step
        (DDP cannot leave a sparse parameter unused: "Expected sparse gradient to be defined"); its
        optimiser is never stepped in phase 2, so the keys stay bit-identical.
        """
        self.model.freeze_router()
        keys = self.model.router.keys
        self._touch_keys = keys.sparse and self._trainer is not None and self._trainer.world_size > 1
        if self._touch_keys:
            keys.weight.requires_grad_(True)

    def export_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Write the MoME folder (experts, keys, router, index, config) with :func:`save_mome`."""
        return save_mome(self.model, out_dir, overwrite=True, backbone_name=self.hparams.backbone)

    def configure_callbacks(self) -> list[L.Callback]:
        """The expert-usage histogram (``expert_usage.png``) at the end of fit."""
        return [ExpertUsagePlot()]
