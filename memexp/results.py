"""``ResultsWriter``: per-evaluation fact records, learning curves (CSV + PNG) and ``results.json``.

Its history (the initial evaluation, the curve, the wall time of each training segment and how many fact
rows were written) is part of every checkpoint (callback state), so that a run killed and resumed with
``--ckpt_path last`` ends with the files of an uninterrupted run (wall times aside).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from decoding.run_folder import atomic_savefig, atomic_write_json, atomic_write_text
from memexp.fact_eval import FACT_EVALS, fact_eval_rows, write_fact_evals
from memexp.fit_folder import CHECKPOINT_DIR, RESULTS_FILE

CURVE_KEYS = ("val/hallucination_rate", "val/answer_nll", "heldout/answer_nll", "train/loss")


def _is_curve_key(key: str) -> bool:
    return key in CURVE_KEYS or key.startswith("val/hallucination_rate/")


class ResultsWriter(L.Callback):
    """Write a run's results into ``trainer.default_root_dir``.

    - ``fact_evals.csv``: one row per fact and evaluation (epoch, step and the per-fact columns of
      :func:`memexp.fact_eval.fact_eval_rows`); on resume the rows written after the checkpoint are
      dropped, so every evaluation appears once;
    - ``curves.csv`` and ``curves.png``: the evaluation metrics over epochs (the PNG is also logged
      to wandb when a ``WandbLogger`` is used);
    - ``model/``: the trained model via ``save_pretrained`` (usable by ``decoding generate``);
    - ``results.json`` at the end of ``fit``: initial and final metrics (final: the last evaluation), the
      epoch at which hallucination first reached 0, checkpoints, total wall time and that of each
      training segment (one per start: resumes add segments).

    Nothing is written under ``fast_dev_run``, nor by validations other than :meth:`initial_evaluation`
    (``memexp validate`` on a run folder leaves its records as they are).
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.curve: list[dict[str, float]] = []
        self.initial: dict[str, float] = {}
        self.segments: list[float] = []  # wall time of the finished training segments (s)
        self.fact_rows = 0  # rows of fact_evals.csv (header aside) that belong to this run's history
        self._resumed = False
        self._record_validation = False

    def initial_evaluation(self, trainer: L.Trainer, model: L.LightningModule, datamodule=None) -> None:
        """Evaluate ``model`` before training: the "initial" point of the results and curves."""
        self._record_validation = True
        try:
            trainer.validate(model, datamodule=datamodule, verbose=False)
        finally:
            self._record_validation = False

    # ---- state kept in checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": dict(self.initial),
            "curve": [dict(r) for r in self.curve],
            "segments": [*self.segments, time.perf_counter() - self.start],
            "fact_rows": self.fact_rows,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = dict(state_dict["initial"])
        self.curve = [dict(r) for r in state_dict["curve"]]
        self.segments = list(state_dict["segments"])
        self.fact_rows = int(state_dict["fact_rows"])
        self._resumed = True

    # ---- hooks -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        if self._resumed and trainer.is_global_zero and not trainer.fast_dev_run:
            self._truncate_fact_evals(self._root(trainer) / FACT_EVALS)

    def _truncate_fact_evals(self, path: Path) -> None:
        """Drop the rows of evaluations that ran after the checkpoint (they will run again)."""
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        if len(lines) > self.fact_rows + 1:
            atomic_write_text(path, "".join(lines[: self.fact_rows + 1]))

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def _metrics(self, trainer: L.Trainer) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if _is_curve_key(k)}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        records = getattr(pl_module, "fact_records", None)
        if not records:
            return
        fit = trainer.state.fn == "fit"
        if not (fit or self._record_validation):
            return
        epoch = trainer.current_epoch if fit else -1
        row = {"epoch": epoch, "step": trainer.global_step, **self._metrics(trainer)}
        if fit:
            self.curve.append(row)
        else:
            self.initial = row
        self.fact_rows += len(records["fact_id"])
        if trainer.is_global_zero:
            rows = fact_eval_rows(records, epoch, trainer.global_step)
            write_fact_evals(self._root(trainer) / FACT_EVALS, rows, append=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        root = self._root(trainer)
        segments = [round(s, 2) for s in [*self.segments, time.perf_counter() - self.start]]
        last = self.curve[-1] if self.curve else {}
        last_eval = {k: v for k, v in last.items() if k not in ("epoch", "step")}
        zero = [r["epoch"] for r in self.curve if r.get("val/hallucination_rate", 1.0) == 0.0]
        ckpt = trainer.checkpoint_callback
        results = {
            "status": "finished",
            "initial": self.initial,
            "final": last_eval or self._metrics(trainer),
            "first_zero_hallucination_epoch": zero[0] if zero else None,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "wall_time_s": round(sum(segments), 2),
            "wall_time_segments_s": segments,
            "best_checkpoint": getattr(ckpt, "best_model_path", None) or None,
            "last_checkpoint": getattr(ckpt, "last_model_path", None) or None,
            "checkpoint_dir": str(root / CHECKPOINT_DIR),
        }
        if self.curve:
            self._write_curves(trainer, root)
        if hasattr(pl_module, "export_pretrained"):
            tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule else None
            out = root / getattr(pl_module, "export_name", "model")
            results["model_dir"] = str(pl_module.export_pretrained(out, tokenizer))
        atomic_write_json(root / RESULTS_FILE, results)

    def _write_curves(self, trainer: L.Trainer, root: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for row in self.curve for k in row} - {"epoch", "step"})
        lines = [",".join(["epoch", "step", *keys])]
        lines += [",".join(str(row.get(k, "")) for k in ["epoch", "step", *keys]) for row in self.curve]
        atomic_write_text(root / "curves.csv", "\n".join(lines) + "\n")
        points = ([self.initial] if self.initial else []) + self.curve  # the initial row has epoch -1
        epochs = [r["epoch"] + 1 for r in points]  # epochs completed
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(epochs, [r.get("val/hallucination_rate") for r in points], "o-", label="hallucination rate")
        ax.set_xlabel("epochs trained")
        ax.set_ylabel("hallucination rate")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        ax2.plot(epochs, [r.get("val/answer_nll") for r in points], "s--", color="C1", label="answer NLL")
        ax2.set_ylabel("answer NLL (nats/token)")
        fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.6))
        fig.tight_layout()
        atomic_savefig(fig, root / "curves.png", dpi=120, metadata={"Software": None})
        plt.close(fig)
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("curves", [str(root / "curves.png")])
