"""``FactTuning``: memorise facts with a HF causal LM by full fine-tuning or a peft LoRA adapter.

The evaluation is shared by every memorisation method (subclasses such as the memory-expert module
override :meth:`FactTuning.forward` / :meth:`FactTuning.configure_optimizers` only):

- ``val/hallucination_rate``: fraction of memorised facts whose greedy answer is not exactly the
  stored answer (teacher-forced argmax, see :mod:`memexp.recall`);
- ``val/answer_nll``: mean over facts of the per-token answer NLL; per-fact values are kept in
  :attr:`FactTuning.fact_records` for writers;
- ``heldout/answer_nll``: the same on held-out facts that are never trained on.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import nn

from memexp.recall import answer_stats

Method = Literal["full", "lora"]
Optimizer = Literal["adamw", "adafactor", "sgd"]


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of ``nn.Linear`` modules (``q_proj``, ``c_attn``...), lm_head excluded."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and not name.endswith("lm_head")
    }
    return sorted(names)


def apply_lora(
    model: nn.Module, r: int, alpha: float, dropout: float, targets: list[str] | None
) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter; refuse target names that match no linear module."""
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ValueError(f"lora_r must be > 0, got {r}")
    available = linear_module_names(model)
    if targets:
        missing = [t for t in targets if t not in available]
        if missing:
            raise ValueError(
                f"LoRA target modules {missing} match no linear layer of {type(model).__name__}; "
                f"the linear modules are {available} (or leave lora_targets null for all of them)"
            )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or available,
        fan_in_fan_out=type(model).__name__.startswith("GPT2"),
    )
    return get_peft_model(model, config)


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
        dtype: parameter dtype to load the backbone in (``float32``, ``bfloat16``...); the
            checkpoint's own when None.
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
        dtype: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in ("full", "lora"):
            raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
        self.save_hyperparameters()
        from decoding.models import load_causal_lm

        model = load_causal_lm(backbone, dtype=dtype)
        if method == "lora":
            model = apply_lora(model, lora_r, lora_alpha, lora_dropout, lora_targets)
        self.model = model.train()  # from_pretrained returns eval mode; Lightning would keep it
        self.strict_loading = method == "full"  # LoRA checkpoints hold only the trainable weights
        self.fact_records: dict[str, torch.Tensor] = {}
        self._val_outputs: dict[int, list[tuple[torch.Tensor, ...]]] = {}

    # ---- model ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T, V) of the adapted model."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def setup(self, stage: str) -> None:
        from decoding.models import check_tokenizer_fits

        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            check_tokenizer_fits(datamodule.tokenizer, self.model)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the RNG (dropout) of each step depends on (seed, step, rank) only: resumed runs replay exactly
        torch.manual_seed(hash((self.hparams.seed, self.global_step, self.global_rank)) % 2**31)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
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
        raise ValueError(f"unknown optimizer {hp.optimizer!r}; choose adamw, adafactor or sgd")

    # ---- evaluation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        stats = answer_stats(self(batch), batch["labels"])
        self._val_outputs.setdefault(dataloader_idx, []).append((batch["fact_ids"], stats.nll, stats.exact))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def _gather_records(self, idx: int) -> dict[str, torch.Tensor]:
        """Per-fact (id, nll, exact) across ranks, de-duplicated (distributed samplers pad)."""
        ids, nll, exact = (torch.cat(t) for t in zip(*self._val_outputs[idx]))
        if self.trainer.world_size > 1:
            ids, nll, exact = (self.all_gather(t).flatten() for t in (ids, nll, exact))
        ids, order = ids.sort(stable=True)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        return {
            "fact_id": ids[keep].cpu(),
            "nll": nll[order][keep].cpu(),
            "exact": exact[order][keep].bool().cpu(),
        }

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
        if 1 in self._val_outputs:
            heldout = self._gather_records(1)
            metrics["heldout/answer_nll"] = heldout["nll"].mean()
        for name, value in metrics.items():
            self.log(
                name,
                value.to(self.device),
                prog_bar=name.endswith("hallucination_rate"),
                add_dataloader_idx=False,
            )

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights when the backbone is frozen (LoRA): it is referenced, not copied."""
        if self.hparams.method == "full":
            return
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trainable weights (e.g. {sorted(missing)[:3]}); it was "
                "written for another method or backbone: resume with the config that wrote it"
            )
