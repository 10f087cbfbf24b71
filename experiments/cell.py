"""One memorisation run ("cell": one method on one fact set), resumable, with its records on disk.

A cell folder holds::

    checkpoints/last.ckpt   whole Lightning state after every evaluation (the probe's records included),
                            written beside itself and renamed (memexp.checkpointing.RunCheckpoint)
    fact_evals.csv          per evaluation and training fact, memexp's schema (memexp.fact_eval): epoch,
                            step, fact_id, nll, nll_sum, max_tok_nll, min_tok_p, exact (greedy),
                            num_tokens, exact/<head> per decoding head; then corrupted
    curve.csv               per evaluation: train loss, train exact match (per head), held-out exact
    cell.json               summary, written last (its presence marks the cell finished)

A killed cell resumes from its last evaluation (``last.ckpt``); a finished one is read back, not re-run.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from decoding.run_folder import atomic_write_json, atomic_write_text
from experiments.methods import build_method
from experiments.probe import MemorisationProbe
from memexp.checkpointing import RunCheckpoint, last_checkpoint
from memexp.data import FactsDataModule, tokenize_fact
from memexp.fact_eval import FACT_EVALS, write_fact_evals
from memexp.facts import Fact

CELL_FILE = "cell.json"


@dataclass
class TrainConfig:
    """Training of every cell.

    Attributes:
        max_epochs: epoch budget of a cell (training stops earlier once every fact is recalled).
        batch_size: training batch size.
        eval_every: epochs between evaluations of every fact.
        stop_when_fit: stop a cell at the first evaluation with 100% exact match on its training facts.
        method_options: per method, keyword arguments of its module (``lr``, ``lora_r``, ``mome``...).
        heads: decoding heads evaluated besides greedy (``dola:dola_layers=low``, ``sled``,
            ``dera:lam=2``): the module's ``eval_heads``; DeRa's reference is the model with its
            adaptation off (full fine-tuning: the backbone's weights swapped in).
        keep_checkpoints: keep a finished cell's ``checkpoints/`` (False: delete them once ``cell.json``
            is written; a full fine-tuning checkpoint of a 135M model is 1.6 GB, and a finished cell
            is read back from its records, never resumed).
        accelerator: Lightning accelerator.
        progress: show Lightning's progress bar.
    """

    max_epochs: int = 100
    batch_size: int = 16
    eval_every: int = 1
    stop_when_fit: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: list[str] = field(default_factory=list)
    keep_checkpoints: bool = True
    accelerator: str = "cpu"
    progress: bool = False


class GivenFactsDataModule(FactsDataModule):
    """:class:`memexp.data.FactsDataModule` over given fact lists (training and held-out)."""

    def __init__(self, tokenizer: str, train: list[Fact], heldout: list[Fact], batch_size: int, seed: int):
        super().__init__(tokenizer=tokenizer, batch_size=batch_size, seed=seed)
        for key in ("train", "heldout"):  # keep checkpoints loadable with weights_only=True
            self._hparams.pop(key, None)
            self._hparams_initial.pop(key, None)
        self._given = (list(train), list(heldout))

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        from decoding.models import load_tokenizer

        self.tokenizer = load_tokenizer(self.hparams.tokenizer)
        self.facts, self.heldout_facts = self._given
        template = self.hparams.template
        self.train_examples = [tokenize_fact(f, self.tokenizer, template) for f in self.facts]
        self.heldout_examples = [tokenize_fact(f, self.tokenizer, template) for f in self.heldout_facts]


def first_epoch_reaching(
    curve: list[dict[str, float]], key: str, level: float
) -> tuple[int | None, int | None]:
    """(epochs, steps) of the first evaluation whose ``key`` is >= ``level``; (None, None) if never."""
    for row in curve:
        if row.get(key, -1.0) >= level - 1e-12:
            return int(row["epoch"]), int(row["step"])
    return None, None


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV atomically (columns: the union of keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_fmt(row.get(k, "")) for k in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_rows(path: Path) -> list[dict[str, float]]:
    """Read a CSV written by :func:`write_rows` back as float dicts."""
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def run_cell(
    cell_dir: Path,
    method: str,
    backbone: str,
    train: list[Fact],
    heldout: list[Fact],
    corrupted: list[int],
    cfg: TrainConfig,
    seed: int,
    logger: Any = False,
    after_fit: Callable[[L.LightningModule, FactsDataModule], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``train`` (resuming from ``cell_dir``) and return the cell summary.

    Args:
        cell_dir: the cell's folder; a finished cell (``cell.json``) is read back without training.
        method: registered method name (:mod:`experiments.methods`).
        backbone: model path or ``tiny:`` name.
        train: facts to memorise, with the answers they are trained on.
        heldout: facts never trained on, with true answers.
        corrupted: ids of training facts whose answers are random.
        cfg: training settings.
        seed: seed of the module and the data order.
        logger: a Lightning logger or False.
        after_fit: ``(module, data) -> dict`` run on the trained module; its entries join the summary
            (e.g. a generation-based held-out measure).
    """
    done = cell_dir / CELL_FILE
    if done.exists():
        import json

        return json.loads(done.read_text())
    L.seed_everything(seed, verbose=False)
    module = build_method(method, backbone, seed, cfg.method_options.get(method), eval_heads=cfg.heads)
    data = GivenFactsDataModule(backbone, train, heldout, cfg.batch_size, seed)
    data.setup("fit")
    probe = MemorisationProbe(eval_every=cfg.eval_every, stop_when_fit=cfg.stop_when_fit)
    ckpt_dir = cell_dir / "checkpoints"
    trainer = L.Trainer(
        default_root_dir=str(cell_dir),
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=1,
        logger=logger,
        callbacks=[probe, RunCheckpoint(dirpath=str(ckpt_dir))],  # after the probe's evaluation
        check_val_every_n_epoch=cfg.eval_every,  # the module's validation is the probe's evaluation
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=last_checkpoint(cell_dir))
    wall = time.perf_counter() - start

    bad = set(corrupted)
    for row in probe.fact_rows:
        row["corrupted"] = int(row["fact_id"] in bad)
    write_fact_evals(cell_dir / FACT_EVALS, probe.fact_rows)
    write_rows(cell_dir / "curve.csv", probe.curve)
    first, last_row = probe.curve[0], probe.curve[-1]
    summary: dict[str, Any] = {
        "method": method,
        "num_train": len(train),
        "num_corrupted": len(corrupted),
        "num_heldout": len(heldout),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "answer_tokens": sum(len(e.answer_ids) for e in data.train_examples),
        "epochs": int(last_row["epoch"]),
        "steps": int(last_row["step"]),
        "final_train_loss": last_row["train_loss"],
        "final_train_exact": last_row["train/exact"],
        "heldout_exact_before": first.get("heldout/exact"),
        "heldout_exact_after": last_row.get("heldout/exact"),
        "heldout_answer_exact_before": first.get("heldout/answer_exact"),
        "heldout_answer_exact_after": last_row.get("heldout/answer_exact"),
        "wall_time_s": round(wall, 2),  # of the last (possibly resumed) fit call
    }
    if after_fit is not None:
        summary.update(after_fit(module, data))
    for level in (0.5, 0.9, 1.0):
        epochs, steps = first_epoch_reaching(probe.curve, "train/exact", level)
        summary[f"epochs_to_{int(level * 100)}"] = epochs
        summary[f"steps_to_{int(level * 100)}"] = steps
    atomic_write_json(done, summary)
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return summary
