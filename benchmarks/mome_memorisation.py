"""Memorisation speed: MoME vs the best peft LoRA baseline on the same backbone and random facts.

Run (CPU; each run stops at 0% hallucination or at ``--max-minutes``)::

    python benchmarks/mome_memorisation.py --facts 1000 --lora-lrs 1e-3 3e-3 --max-minutes 12

Backbone: ``tiny:llama?hidden=128&layers=4&pretrain_steps=600``, a tiny Llama pretrained offline on the
answer format (random-weight backbones bound what frozen-backbone adapters can do: see docs/memexp.md).
Every run: same tiny backbone, same facts (seeded), same held-out facts (never trained on), validation
every ``--val-every`` epochs. Reported per run: training wall time until validation first shows 0%
hallucination (validation time excluded), epochs, final hallucination rate, and the held-out answer NLL
before and after (relative change). The LoRA baseline is searched over ``--lora-lrs``; the best (fastest
to 0%, else lowest final hallucination) is compared with MoME. MoME's held-out NLL is measured with the
experts on (the routed model, fact gate included), i.e. what a user of the tuned model sees on questions
it never memorised.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from memexp.data import FactsDataModule
from memexp.fact_tuning import FactTuning
from memexp.mome import MoMEConfig
from memexp.mome.index import IndexConfig
from memexp.mome.tuning import MoMETuning


class TrainClock(L.Callback):
    """Training wall time (validation excluded) until validation first reports 0% hallucination.

    Lightning runs an epoch's validation before ``on_train_epoch_end``, so the clock stops at each
    validation of ``fit`` and restarts after it; the time to 0% includes the epoch that reached it.
    """

    def __init__(self) -> None:
        self.train_s, self.to_zero_s, self.zero_epoch, self._t0 = 0.0, None, None, 0.0
        self.val_s, self.validations, self._v0 = 0.0, 0, 0.0  # fit validations: count, summed seconds

    def _lap(self) -> None:
        now = time.perf_counter()
        self.train_s += now - self._t0
        self._t0 = now

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self._lap()

    def on_validation_start(self, trainer, module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._lap()
            self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self._t0 = time.perf_counter()  # the validation just run is not training time
        self.val_s += self._t0 - self._v0
        self.validations += 1
        rate = trainer.callback_metrics.get("val/hallucination_rate")
        if rate is None:
            return
        print(
            f"  epoch {trainer.current_epoch} train {self.train_s:.0f}s hallucination {float(rate):.3f}",
            flush=True,
        )
        if float(rate) == 0.0 and self.to_zero_s is None:
            self.to_zero_s, self.zero_epoch = self.train_s, trainer.current_epoch


def stop_at_zero_trainer(args, clock: TrainClock, root: str) -> L.Trainer:
    """The benchmarks' shared stop rule: a CPU Trainer that stops at the first evaluation with 0%
    hallucination, or at ``args.max_epochs`` / ``args.max_minutes``, validating every ``args.val_every``
    epochs, timed by ``clock``; nothing is logged or checkpointed (``root`` is a scratch folder)."""
    stop = EarlyStopping("val/hallucination_rate", mode="min", stopping_threshold=1e-6, patience=10_000)
    return L.Trainer(
        max_epochs=args.max_epochs,
        max_time={"minutes": args.max_minutes},
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=args.val_every,
        callbacks=[clock, stop],
        default_root_dir=root,
    )


def run(module: L.LightningModule, args, label: str) -> dict:
    data = FactsDataModule(
        tokenizer=args.backbone,
        num_random_facts=args.facts,
        num_heldout=args.heldout,
        batch_size=args.batch,
        eval_batch_size=256,
        seed=0,
    )
    clock = TrainClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = stop_at_zero_trainer(args, clock, tmp)
        before = trainer.validate(module, data, verbose=False)[0]
        trainer.fit(module, data)
        after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = {
        "run": label,
        "train_s_to_zero": None if clock.to_zero_s is None else round(clock.to_zero_s, 1),
        "zero_epoch": clock.zero_epoch,
        "train_s_total": round(clock.train_s, 1),
        "epochs": trainer.current_epoch,
        "final_hallucination": after.get("val/hallucination_rate"),
        "heldout_nll_before": before["heldout/answer_nll"],
        "heldout_nll_after": after.get("heldout/answer_nll"),
    }
    result["heldout_nll_change"] = result["heldout_nll_after"] / result["heldout_nll_before"] - 1.0
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="tiny:llama?hidden=128&layers=4&pretrain_steps=600")
    parser.add_argument("--facts", type=int, default=1000)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--lora-lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    parser.add_argument("--mome-lr", type=float, default=6e-3)
    parser.add_argument("--experts", type=int, default=16384)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    sites = ["model.layers.[23].mlp.down_proj", "model.layers.[23].self_attn.o_proj"]
    parser.add_argument("--sites", nargs="+", default=sites)
    parser.add_argument("--query-layer", type=int, default=2)
    parser.add_argument("--gate", type=float, default=0.5, help="fact gate radius (0 = off)")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--skip-mome", action="store_true")
    args = parser.parse_args()
    print(
        f"torch threads {torch.get_num_threads()}; backbone {args.backbone}; {args.facts} facts, "
        f"{args.heldout} held out; batch {args.batch}"
    )
    results = []
    if not args.skip_mome:
        torch.manual_seed(0)
        cfg = MoMEConfig(
            num_experts=args.experts,
            k=args.k,
            rank=args.rank,
            scale=float(args.k),
            sites=args.sites,
            query_layer=args.query_layer,
            key_dim=32,
            aux_weight=0.1,
            index=IndexConfig(kind="flat"),
            gate=args.gate,
        )
        module = MoMETuning(
            backbone=args.backbone, mome=cfg, phase1_epochs=1, lr=args.mome_lr, optimizer="sparse_adam"
        )
        label = f"mome E={args.experts} k={args.k} r={args.rank} gate={args.gate:g}"
        label += f", SparseAdam lr={args.mome_lr:g}"
        results.append(run(module, args, label))
    if not args.skip_lora:
        for lr in args.lora_lrs:
            torch.manual_seed(0)
            module = FactTuning(
                backbone=args.backbone,
                method="lora",
                lora_r=args.lora_r,
                lora_alpha=float(args.lora_r),
                lr=lr,
                optimizer="adamw",
            )
            results.append(run(module, args, f"lora r={args.lora_r} all linears, AdamW lr={lr:g}"))
    lora = [r for r in results if r["run"].startswith("lora")]
    mome = None if args.skip_mome else results[0]
    if lora and mome is not None and mome["train_s_to_zero"] is not None:
        done = [r for r in lora if r["train_s_to_zero"] is not None]
        if done:
            best = min(done, key=lambda r: r["train_s_to_zero"])
            ratio = mome["train_s_to_zero"] / best["train_s_to_zero"]
            print(f"MoME / best LoRA time to 0% hallucination: {ratio:.2f} (best LoRA: {best['run']})")
        else:
            print("no LoRA run reached 0% hallucination within the cap; MoME did")


if __name__ == "__main__":
    main()
