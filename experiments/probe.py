"""Per-fact memorisation records of a cell during training, for every method and decoding head.

:class:`MemorisationProbe` is the Lightning callback that records the learner's own evaluation
(:class:`memexp.fact_tuning.FactTuning`'s validation, i.e. :func:`memexp.fact_eval.evaluate_batch`: per-fact
columns, greedy plus the module's ``eval_heads``) before training and every ``eval_every`` epochs, records
the mean training loss of each epoch, stops once every fact is recalled, and keeps its records in the
checkpoint so that a resumed run ends with the same tables. Facts are scored once per evaluation: at an
evaluation point where the trainer's validation ran (``check_val_every_n_epoch = eval_every``), its
records are taken; elsewhere (before training, a last epoch off the schedule) the probe runs the same
evaluation over the same validation batches.

Loss normalisation: the training loss is HF's causal-LM loss, the mean NLL over the answer tokens + EOS
of a batch (prompt tokens are masked); ``train_loss`` is the mean of the step losses of an epoch; ``nll``
is the same normalisation per fact, and ``train/nll_tok`` of the curve the token-weighted mean over facts.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from memexp.fact_eval import evaluate_facts, fact_eval_rows


def summarise(cols: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Aggregate metrics of one evaluation: exact-match rates and the token-weighted mean NLL."""
    out = {
        f"{prefix}/exact": cols["exact"].float().mean().item(),
        f"{prefix}/answer_exact": cols["answer_exact"].float().mean().item(),
        f"{prefix}/nll_tok": (cols["nll_sum"].sum() / cols["num_tokens"].sum()).item(),
        f"{prefix}/nll_sum": cols["nll_sum"].mean().item(),
    }
    for key in cols:
        if key.startswith("exact/"):
            out[f"{prefix}/{key}"] = cols[key].float().mean().item()
    return out


class MemorisationProbe(L.Callback):
    """Record every fact before training and every ``eval_every`` epochs; stop once all are recalled.

    The module is a :class:`memexp.fact_tuning.FactTuning` (or subclass): its ``fact_records`` /
    ``heldout_records`` after validation, and ``model``, ``eval_heads``, ``reference`` for the
    evaluations the probe runs itself over the datamodule's validation loaders (training facts, held-out).

    Args:
        eval_every: epochs between evaluations (the last epoch is always evaluated).
        stop_when_fit: stop training at the first evaluation where every training fact is recalled.

    Attributes:
        fact_rows: one dict per (evaluation, training fact): :func:`memexp.fact_eval.fact_eval_rows`.
        curve: one dict per evaluation: epoch, step, train loss of that epoch and the summaries.
    """

    def __init__(self, eval_every: int = 1, stop_when_fit: bool = True) -> None:
        if eval_every <= 0:
            raise ValueError(f"eval_every must be > 0 epochs, got {eval_every}")
        self.eval_every, self.stop_when_fit = eval_every, stop_when_fit
        self.fact_rows: list[dict[str, int | float]] = []
        self.curve: list[dict[str, float]] = []
        self._loss_sum, self._loss_count = 0.0, 0
        self._validated: tuple[int, dict, dict] | None = None  # (epoch, train records, held-out records)

    # ---- state kept in checkpoints (resumed runs end with the same tables) ------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fact_rows": self.fact_rows, "curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fact_rows, self.curve = list(state_dict["fact_rows"]), list(state_dict["curve"])

    # ---- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.curve:  # a fresh run: the "before training" point
            self.record(trainer, *self.evaluate(trainer, pl_module), epochs=0, train_loss=math.nan)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # manual optimisation may return nothing: use the logged step loss
            loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_count += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and pl_module.fact_records:
            self._validated = (trainer.current_epoch, pl_module.fact_records, pl_module.heldout_records)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        if epochs % self.eval_every and epochs < trainer.max_epochs:
            return
        train_loss = self._loss_sum / self._loss_count if self._loss_count else math.nan
        if self._validated is not None and self._validated[0] == trainer.current_epoch:
            records, heldout = self._validated[1:]  # this epoch's validation: no second scoring
        else:
            records, heldout = self.evaluate(trainer, pl_module)
        summary = self.record(trainer, records, heldout, epochs, train_loss)
        if self.stop_when_fit and summary["train/exact"] == 1.0:
            trainer.should_stop = True

    # ---- evaluation ------------------------------------------------------------------------------
    @staticmethod
    def evaluate(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, dict]:
        """Training facts (greedy + the module's heads) and held-out facts (greedy), as validation does."""
        loaders = trainer.datamodule.val_dataloader()
        model = pl_module.model
        records = evaluate_facts(model, loaders[0], pl_module.eval_heads, pl_module.reference)
        heldout = evaluate_facts(model, loaders[1]) if len(loaders) > 1 else {}
        return records, heldout

    def record(
        self, trainer: L.Trainer, records: dict, heldout: dict, epochs: int, train_loss: float
    ) -> dict[str, float]:
        """Append one evaluation's rows and summary, and log the summary."""
        step = trainer.global_step
        self.fact_rows += fact_eval_rows(records, epochs, step)
        summary = {"epoch": epochs, "step": step, "train_loss": train_loss, **summarise(records, "train")}
        if heldout:
            summary.update(summarise(heldout, "heldout"))
        self.curve.append(summary)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in summary.items() if k != "step"}, step=step)
        return summary
