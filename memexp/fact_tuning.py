"""``FactTuning``: memorise facts with a HF causal LM by full fine-tuning or a peft LoRA adapter.

The evaluation is shared by every memorisation method (subclasses such as the memory-expert module
override :meth:`FactTuning.forward` / :meth:`FactTuning.configure_optimizers` only); every batch goes
through the one fact-evaluation path, :func:`memexp.fact_eval.evaluate_batch`:

- ``val/hallucination_rate``: fraction of memorised facts whose greedy answer is not exactly the
  stored answer (teacher-forced argmax); ``val/hallucination_rate/<spec>`` per extra decoding head;
- ``val/answer_nll``: mean over facts of the per-token answer NLL; per-fact columns
  (:data:`memexp.fact_eval.FACT_COLUMNS`) are kept in :attr:`FactTuning.fact_records` for writers;
- ``heldout/answer_nll``: the same on held-out facts that are never trained on
  (:attr:`FactTuning.heldout_records`; greedy only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from decoding.errors import UserError, one_line
from decoding.head_spec import parse_head_spec
from decoding.run_folder import atomic_write_dir
from memexp.answer_logits import answer_positions, answer_token_nll
from memexp.checkpoint_io import use_checked_checkpoint_io
from memexp.compact_state import compact_optimizer_states, expand_optimizer_states
from memexp.fact_eval import evaluate_batch
from memexp.model_view import base_state_of, reference_of

Method = Literal["full", "lora"]
Optimizer = Literal["adamw", "adafactor", "sgd"]


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of ``nn.Linear`` modules (``q_proj``, ``c_attn``, ``lm_head``...)."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))
    }
    return sorted(names)


def check_number(name: str, value: float, low: float = 0.0, strict: bool = True, fix: str = "") -> None:
    """Refuse a setting that is not a finite number above ``low`` (``>= low`` when not ``strict``).

    Raises:
        UserError: naming ``name``, the value and ``fix``.
    """
    ok = isinstance(value, int | float) and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise UserError(f"{name}={value!r} must be a finite number {bound}" + (f"; {fix}" if fix else ""))


def parse_eval_heads(specs: list[str] | None) -> dict:
    """``{spec: head}`` for the ``eval_heads`` option; a bad spec is one line naming it."""
    heads = {}
    for spec in specs or []:
        try:
            heads[spec] = parse_head_spec(spec)
        except Exception as err:  # noqa: BLE001 - unknown names, bad options, constructor errors
            raise UserError(
                f"eval_heads entry {spec!r} is not a decoding head ({one_line(str(err))}); write "
                "NAME[:key=value,...] with NAME in greedy, dola, sled, dera, e.g. sled or dera:lam=2"
            ) from None
    return heads


def apply_lora(
    model: nn.Module, r: int, alpha: float, dropout: float, targets: list[str] | None
) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter; refuse target names that match no linear module."""
    from peft import LoraConfig, get_peft_model

    check_lora(r, alpha, dropout)
    available = linear_module_names(model)
    if targets:
        missing = [t for t in targets if t not in available]
        if missing:
            raise UserError(
                f"lora_targets {missing} match no linear layer of {type(model).__name__}; "
                f"the linear modules are {available} (or leave lora_targets null for all of them)"
            )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or [name for name in available if name != "lm_head"],
        fan_in_fan_out=type(model).__name__.startswith("GPT2"),
    )
    return get_peft_model(model, config)


def check_lora(r: int, alpha: float, dropout: float) -> None:
    """Refuse LoRA settings peft would reject late or silently misuse."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UserError(f"lora_r={r!r} must be an integer >= 1 (the adapter rank, e.g. 8 or 16)")
    check_number(
        "lora_alpha", alpha, fix="the LoRA scale is lora_alpha / lora_r, e.g. lora_alpha = 2 * lora_r"
    )
    if not (isinstance(dropout, int | float) and 0 <= dropout < 1):
        raise UserError(f"lora_dropout={dropout!r} must be in [0, 1), e.g. 0.0 or 0.05")


class FactTuning(L.LightningModule):
    """Memorise question/answer facts with a HF causal LM.

    Args:
        backbone: model folder, hub id, or ``tiny:llama`` / ``tiny:gpt2`` (offline tiny models).
        method: ``full`` fine-tunes every weight; ``lora`` trains a peft LoRA adapter on a frozen backbone.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: leaf names of the linear modules to adapt (``q_proj``, ``v_proj``...); all
            linear modules but lm_head when None.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW / Adafactor).
        optimizer: ``adamw``, ``adafactor`` or ``sgd``.
        lr_schedule: ``constant``, or ``cosine`` decay to 10% of ``lr`` over ``trainer.max_epochs``.
        dtype: parameter dtype to load the backbone in (``float32``, ``bfloat16``...); the
            checkpoint's own when None.
        eval_heads: extra decoding heads whose hallucination rate is also logged, as
            ``val/hallucination_rate/<spec>``; specs like ``sled``, ``dola``, ``dera:lam=2``
            (:func:`decoding.head_spec.parse_head_spec`). DeRa's reference is this model without its
            adaptation: the adapter off (LoRA), or the backbone's own weights swapped in (full; a CPU
            copy of them is kept only when a DeRa head is asked for).
        seed: base seed; every training step re-seeds torch with (seed, step, rank) so that a run
            resumed from a checkpoint replays the uninterrupted run exactly.
    """

    def __init__(
        self,
        backbone: str = "tiny:llama",
        method: Method = "lora",
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adamw",
        lr_schedule: Literal["constant", "cosine"] = "constant",
        dtype: str | None = None,
        seed: int = 0,
        eval_heads: list[str] | None = None,
    ) -> None:
        super().__init__()
        from decoding.models import load_causal_lm, parse_dtype

        # every setting is checked before the backbone is loaded
        if method not in ("full", "lora"):
            raise UserError(f"method={method!r} is unknown; choose 'full' or 'lora'")
        if method == "lora":
            check_lora(lora_r, lora_alpha, lora_dropout)
        elif lora_targets:
            raise UserError(
                f"lora_targets={lora_targets} are given but method='full' trains every weight; "
                "use method='lora' or drop lora_targets"
            )
        check_number("lr", lr, fix="the learning rate, e.g. 1e-3")
        check_number("weight_decay", weight_decay, strict=False, fix="use 0.0 for none")
        if optimizer not in ("adamw", "adafactor", "sgd"):
            raise UserError(f"optimizer={optimizer!r} is unknown; choose adamw, adafactor or sgd")
        if lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr_schedule={lr_schedule!r} is unknown; choose constant or cosine")
        if dtype is not None:
            parse_dtype(dtype)
        self.eval_heads = parse_eval_heads(eval_heads)
        self.save_hyperparameters()
        model = load_causal_lm(backbone, dtype=dtype)
        if method == "lora":
            model = apply_lora(model, lora_r, lora_alpha, lora_dropout, lora_targets)
        self.model = model.train()  # from_pretrained returns eval mode; Lightning would keep it
        self._base_state = None  # full fine-tuning: DeRa's reference weights (CPU), only when asked for
        if method == "full" and any(h.uses_ref for h in self.eval_heads.values()):
            self._base_state = base_state_of(model)
        self.strict_loading = method == "full"  # LoRA checkpoints hold only the trainable weights
        self.fact_records: dict[str, torch.Tensor] = {}
        self.heldout_records: dict[str, torch.Tensor] = {}
        self._val_outputs: dict[int, list[dict[str, torch.Tensor]]] = {}

    # ---- model ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T, V) of the adapted model."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def setup(self, stage: str) -> None:
        from decoding.models import check_tokenizer_fits

        use_checked_checkpoint_io(self.trainer.strategy)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            check_tokenizer_fits(datamodule.tokenizer, self.model)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the RNG (dropout) of each step depends on (seed, step, rank) only: resumed runs replay exactly
        torch.manual_seed(hash((self.hparams.seed, self.global_step, self.global_rank)) % 2**31)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        keep = answer_positions(batch["labels"])  # (B, T): the LM head runs at answer positions only
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
        ).logits  # (N, V)
        loss = answer_token_nll(logits, batch["labels"], keep).mean()  # == HF's causal-LM loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser named by ``optimizer`` over ``params``."""
        hp = self.hparams
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(
                params, lr=hp.lr, weight_decay=hp.weight_decay, scale_parameter=False, relative_step=False
            )
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay)
        raise UserError(f"optimizer={hp.optimizer!r} is unknown; choose adamw, adafactor or sgd")

    def configure_optimizers(self):
        optimizer = self.make_optimizer([p for p in self.parameters() if p.requires_grad])
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def cosine(step: int) -> float:  # lr -> 10% of lr over the planned steps
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / total))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def reference(self):
        """Context manager under which the model runs without its adaptation (DeRa's reference): adapter
        off (LoRA), experts off (MoME), the backbone's weights swapped in (full; with a DeRa eval head)."""
        factory = reference_of(self.model, self._base_state)
        if factory is None:
            raise UserError(
                "full fine-tuning keeps the backbone's weights for DeRa's reference only when eval_heads "
                "has a dera head; add one (e.g. dera:lam=2)"
            )
        return factory()

    # ---- evaluation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        heads = self.eval_heads if dataloader_idx == 0 else None  # held-out facts: greedy only
        self._val_outputs.setdefault(dataloader_idx, []).append(self.evaluate(batch, heads))

    def evaluate(self, batch: dict[str, torch.Tensor], heads: dict | None) -> dict[str, torch.Tensor]:
        """Per-fact columns of one facts batch (:func:`memexp.fact_eval.evaluate_batch`)."""
        return evaluate_batch(self.model, batch, heads, self.reference)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def _gather_records(self, idx: int) -> dict[str, torch.Tensor]:
        """Per-fact columns across ranks, de-duplicated by fact id (distributed samplers pad).

        Columns: :data:`memexp.fact_eval.FACT_COLUMNS` and ``exact/<spec>`` per extra head.
        """
        parts = self._val_outputs[idx]
        columns = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        if self.trainer.world_size > 1:
            columns = {name: self.all_gather(t).flatten() for name, t in columns.items()}
        ids, order = columns["fact_id"].sort(stable=True)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        return {name: col[order][keep].cpu() for name, col in columns.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        if 0 not in self._val_outputs:
            return
        self.fact_records = self._gather_records(0)
        records = self.fact_records
        metrics = {
            f"{prefix}/hallucination_rate": 1.0 - records["exact"].float().mean(),
            f"{prefix}/answer_nll": records["nll"].mean(),
        }
        for spec in self.eval_heads:
            metrics[f"{prefix}/hallucination_rate/{spec}"] = 1.0 - records[f"exact/{spec}"].float().mean()
        self.heldout_records = self._gather_records(1) if 1 in self._val_outputs else {}
        if self.heldout_records:
            metrics["heldout/answer_nll"] = self.heldout_records["nll"].mean()
        for name, value in metrics.items():
            self.log(
                name,
                value.to(self.device),
                prog_bar=name == f"{prefix}/hallucination_rate",
                add_dataloader_idx=False,
            )

    # ---- checkpoints --------------------------------------------------------------------------
    export_name = "model"  # ResultsWriter exports into <default_root_dir>/<export_name>

    def export_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Write the trained model with ``save_pretrained`` (full weights, or the LoRA adapter that
        names its base) + tokenizer, so ``decoding generate --model out_dir`` and
        :func:`decoding.models.load_causal_lm` load it. Written to a temporary folder, then renamed.
        """

        def fill(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

        return atomic_write_dir(out_dir, fill)

    def checkpoint_identity(self) -> dict:
        """What a checkpoint must match to be resumed by this module (stored as ``checkpoint["memexp"]``)."""
        hp = self.hparams
        identity = {"module": f"{type(self).__module__}.{type(self).__qualname__}", "backbone": hp.backbone}
        if "method" in hp:  # subclasses (MoMETuning) have no method setting
            identity["method"] = hp.method
        if hp.get("method") == "lora":
            identity |= {"lora_r": hp.lora_r, "lora_targets": hp.lora_targets}
        return identity

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record what wrote the checkpoint; keep only trainable weights when the backbone is frozen (LoRA):
        it is referenced, not copied. Optimizer moments drop their all-zero rows (lossless:
        :mod:`memexp.compact_state`)."""
        checkpoint["memexp"] = self.checkpoint_identity()
        compact_optimizer_states(checkpoint)
        if self.hparams.get("method") == "full":
            return
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expand_optimizer_states(checkpoint)  # before Lightning restores the optimizers from it
        trainer = self._trainer
        self.check_checkpoint(checkpoint, trainer.ckpt_path if trainer is not None else None)

    def check_checkpoint(self, checkpoint: dict, path: str | Path | None = None) -> None:
        """Refuse a checkpoint written by another module, method, backbone or adapter shape.

        Args:
            checkpoint: the loaded checkpoint (:func:`memexp.checkpoint_io.read_checkpoint`).
            path: its file, named in the message.

        Raises:
            UserError: naming the file and the settings that differ.
        """
        where = f"checkpoint {path}" if path else "the checkpoint"
        saved, mine = checkpoint.get("memexp"), self.checkpoint_identity()
        if not isinstance(saved, dict):
            raise UserError(
                f"{where} was not written by memexp (no 'memexp' record); resume only from "
                "<default_root_dir>/checkpoints/*.ckpt of a memexp run with the same config"
            )
        differ = [f"{k}={saved.get(k)!r} there, {v!r} here" for k, v in mine.items() if saved.get(k) != v]
        if differ:
            raise UserError(
                f"{where} belongs to another run ({'; '.join(differ)}); resume with the config that "
                "wrote it, or start without --ckpt_path"
            )
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(checkpoint["state_dict"])
        if missing:
            raise UserError(
                f"{where} lacks {len(missing)} trainable weights (e.g. {sorted(missing)[:3]}); it was "
                "written for another method or backbone: resume with the config that wrote it"
            )
