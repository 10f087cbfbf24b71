"""Per-fact memorisation records during training, for every method and decoding head.

:func:`fact_columns` turns teacher-forced logits into the per-fact fields
(docs/algorithms/memorisation.md); :func:`evaluate_facts` runs a module over tokenised facts (greedy plus
any decoding heads, one teacher-forced pass each); :class:`MemorisationProbe` is the Lightning callback
that does it before training and every ``eval_every`` epochs, records the mean training loss of each
epoch, stops once every fact is recalled, and keeps its records in the checkpoint so that a resumed run
ends with the same tables.

Loss normalisation: the training loss is HF's causal-LM loss, the mean NLL
over the answer tokens + EOS of a batch (prompt tokens are masked); ``train_loss`` is the mean of the
step losses of an epoch; ``nll_tok`` is the same normalisation per fact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from experiments.methods import head_model
from memexp.data import IGNORE_INDEX, Example, collate_examples
from memexp.recall import head_exact


@torch.no_grad()
def fact_columns(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-fact fields from one teacher-forced pass.

    Args:
        logits: (B, T, V), position t predicts token t + 1.
        labels: (B, T), ``-100`` outside answer + eos.

    Returns:
        (B,) tensors: ``nll_sum`` (nats, summed over answer tokens + eos), ``nll_tok`` (per token),
        ``max_tok_nll`` (worst token), ``min_tok_p`` = exp(-max_tok_nll), ``exact`` (greedy
        decoding reproduces answer + eos) and ``num_tokens``.
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]  # (B, T-1, V), (B, T-1)
    mask = targets != IGNORE_INDEX  # (B, T-1)
    safe = targets.clamp_min(0)
    token_nll = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none") * mask  # (B, T-1)
    num_tokens = mask.sum(1)
    nll_sum = token_nll.sum(1)
    max_tok = token_nll.max(1).values
    hit = (logits.argmax(-1) == safe) | ~mask  # (B, T-1)
    return {
        "nll_sum": nll_sum,
        "nll_tok": nll_sum / num_tokens.clamp_min(1),
        "max_tok_nll": max_tok,
        "min_tok_p": torch.exp(-max_tok),
        "exact": hit.all(1) & (num_tokens > 0),
        "num_tokens": num_tokens,
    }


@torch.no_grad()
def evaluate_facts(
    module: L.LightningModule,
    examples: Sequence[Example],
    pad_id: int,
    heads: dict[str, Any] | None = None,
    reference: Callable | None = None,
    batch_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Run ``module`` over ``examples``: :func:`fact_columns` plus ``exact/<spec>`` per decoding head.

    Args:
        module: a memorisation module whose ``forward(batch)`` returns logits and whose ``model`` is the
            (adapted) HF model the heads read per-layer logits from.
        examples: tokenised facts.
        pad_id: padding id of the tokenizer.
        heads: decoding heads by spec (``{"sled": SLED(), ...}``); greedy is always the ``exact`` column.
        reference: context-manager factory for the model without its adaptation (DeRa heads).
        batch_size: evaluation batch size.
    """
    was_training = module.training
    module.eval()
    parts: list[dict[str, torch.Tensor]] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start : start + batch_size])
            batch = {k: v.to(module.device) for k, v in collate_examples(chunk, pad_id).items()}
            cols = fact_columns(module(batch), batch["labels"])
            for spec, head in (heads or {}).items():
                cols[f"exact/{spec}"] = head_exact(head_model(module, batch), batch, head, reference)
            cols["fact_id"] = batch["fact_ids"]
            parts.append({k: v.cpu() for k, v in cols.items()})
    finally:
        module.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def summarise(cols: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """Aggregate metrics of one evaluation: exact-match rates and the token-weighted mean NLL."""
    out = {
        f"{prefix}/exact": cols["exact"].float().mean().item(),
        f"{prefix}/nll_tok": (cols["nll_sum"].sum() / cols["num_tokens"].sum()).item(),
        f"{prefix}/nll_sum": cols["nll_sum"].mean().item(),
    }
    for key in cols:
        if key.startswith("exact/"):
            out[f"{prefix}/{key}"] = cols[key].float().mean().item()
    return out


class MemorisationProbe(L.Callback):
    """Evaluate every fact before training and every ``eval_every`` epochs; stop once all are recalled.

    Args:
        train_examples: the facts being trained on (with the answers they are trained on).
        heldout_examples: facts never trained on (true answers), for held-out accuracy.
        pad_id: tokenizer pad id.
        heads: decoding heads by spec, evaluated on the training facts.
        reference: factory ``module -> context-manager factory`` for DeRa's reference.
        eval_every: epochs between evaluations (the last epoch is always evaluated).
        stop_when_fit: stop training at the first evaluation where every training fact is recalled.

    Attributes:
        fact_rows: one dict per (evaluation, training fact): epoch, step and the :func:`fact_columns`.
        curve: one dict per evaluation: epoch, step, train loss of that epoch and the summaries.
    """

    def __init__(
        self,
        train_examples: Sequence[Example],
        heldout_examples: Sequence[Example],
        pad_id: int,
        heads: dict[str, Any] | None = None,
        reference: Callable[[L.LightningModule], Callable | None] | None = None,
        eval_every: int = 1,
        stop_when_fit: bool = True,
    ) -> None:
        if eval_every <= 0:
            raise ValueError(f"eval_every must be > 0 epochs, got {eval_every}")
        self.train_examples, self.heldout_examples = list(train_examples), list(heldout_examples)
        self.pad_id, self.heads, self.reference = pad_id, dict(heads or {}), reference
        self.eval_every, self.stop_when_fit = eval_every, stop_when_fit
        self.fact_rows: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        self._loss_sum, self._loss_count = 0.0, 0

    # ---- state kept in checkpoints (resumed runs end with the same tables) ------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fact_rows": self.fact_rows, "curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fact_rows, self.curve = list(state_dict["fact_rows"]), list(state_dict["curve"])

    # ---- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.curve:  # a fresh run: the "before training" point
            self.evaluate(trainer, pl_module, epochs=0, train_loss=math.nan)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # manual optimisation may return nothing: use the logged step loss
            loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        if epochs % self.eval_every and epochs < trainer.max_epochs:
            return
        train_loss = self._loss_sum / self._loss_count if self._loss_count else math.nan
        summary = self.evaluate(trainer, pl_module, epochs, train_loss)
        if self.stop_when_fit and summary["train/exact"] == 1.0:
            trainer.should_stop = True

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: int, train_loss: float
    ) -> dict[str, float]:
        """Evaluate training and held-out facts, append the records and log the summary."""
        reference = self.reference(pl_module) if self.reference else None
        cols = evaluate_facts(pl_module, self.train_examples, self.pad_id, self.heads, reference)
        step = trainer.global_step
        keys = [k for k in cols if k != "fact_id"]
        for i, fact_id in enumerate(cols["fact_id"].tolist()):
            row = {"epoch": epochs, "step": step, "fact_id": fact_id}
            row.update({k: float(cols[k][i]) for k in keys})
            self.fact_rows.append(row)
        summary = {"epoch": epochs, "step": step, "train_loss": train_loss, **summarise(cols, "train")}
        if self.heldout_examples:
            summary.update(
                summarise(evaluate_facts(pl_module, self.heldout_examples, self.pad_id), "heldout")
            )
        self.curve.append(summary)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in summary.items() if k != "step"}, step=step)
        return summary
