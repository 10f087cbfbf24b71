"""``ResultsWriter``: per-evaluation fact records, learning curves (CSV + PNG) and ``results.json``."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L

from memexp.run_dir import CHECKPOINT_DIR, RESULTS_FILE, atomic_write_json

CURVE_KEYS = ("val/hallucination_rate", "val/answer_nll", "heldout/answer_nll", "train/loss")


def _is_curve_key(key: str) -> bool:
    return key in CURVE_KEYS or key.startswith("val/hallucination_rate/")


class ResultsWriter(L.Callback):
    """Write a run's results into ``trainer.default_root_dir``.

    - ``fact_evals.csv``: one row per fact and evaluation (epoch, step, fact_id, nll, exact); a
      resumed run appends again for the epochs it replays, so readers keep the last row per
      (epoch, fact_id);
    - ``curves.csv`` and ``curves.png``: the evaluation metrics over epochs (the PNG is also logged
      to wandb when a ``WandbLogger`` is used);
    - ``model/``: the trained model via ``save_pretrained`` (usable by ``decoding generate``);
    - ``results.json`` at the end of ``fit``: final metrics, the epoch at which hallucination first
      reached 0, checkpoints and wall time.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.curve: list[dict[str, float]] = []
        self.initial: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def _metrics(self, trainer: L.Trainer) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if _is_curve_key(k)}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        records = getattr(pl_module, "fact_records", None)
        if not records:
            return
        epoch = trainer.current_epoch if trainer.state.fn == "fit" else -1
        path = self._root(trainer) / "fact_evals.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        exact_cols = [k for k in records if k.startswith("exact")]  # exact, exact/<head spec>...
        with path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["epoch", "step", "fact_id", "nll", *exact_cols])
            columns = [records[k].tolist() for k in ("fact_id", "nll", *exact_cols)]
            for fid, nll, *hits in zip(*columns):
                writer.writerow([epoch, trainer.global_step, fid, f"{nll:.6g}", *map(int, hits)])
        row = {"epoch": epoch, "step": trainer.global_step, **self._metrics(trainer)}
        if trainer.state.fn == "fit":
            self.curve.append(row)
        else:
            self.initial = row

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        root = self._root(trainer)
        final = self._metrics(trainer)
        zero = [r["epoch"] for r in self.curve if r.get("val/hallucination_rate", 1.0) == 0.0]
        ckpt = trainer.checkpoint_callback
        results = {
            "status": "finished",
            "initial": self.initial,
            "final": final,
            "first_zero_hallucination_epoch": zero[0] if zero else None,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "wall_time_s": round(time.perf_counter() - self.start, 2),
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
        with (root / "curves.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "step", *keys])
            writer.writeheader()
            writer.writerows(self.curve)
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
        fig.savefig(root / "curves.png", dpi=120)
        plt.close(fig)
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("curves", [str(root / "curves.png")])
