"""Checkpoints that are always the last state and always whole: ``RunCheckpoint`` + ``AtomicCheckpointIO``.

Lightning 2.6's ``ModelCheckpoint`` rewrites ``last.ckpt`` only when its monitored metric improves
(``save_top_k`` decides), and its ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary
file lives in ``$TMPDIR``: on another filesystem the final move is a copy that a kill can cut short. Here:

- ``<dirpath>/last.ckpt``: the whole training state (weights, optimisers, loops, callbacks' state),
  rewritten at the end of every training epoch that had an evaluation, every ``every_n_train_steps``
  steps if asked, and at the end of training, whatever any metric does;
- ``<dirpath>/best.ckpt``: the weights at the best value of ``monitor`` (only when ``monitor`` is set);
- every file is written to a temporary sibling and ``os.replace``'d (:func:`decoding.run_folder.atomic_file`):
  a kill leaves the previous checkpoint whole and at worst a ``.last.ckpt.*.tmp`` sibling, which
  :func:`remove_stale_checkpoint_temps` (called by every start) deletes.

    trainer = L.Trainer(callbacks=[RunCheckpoint(monitor="val/hallucination_rate")], ...)
    trainer.fit(module, ckpt_path=last_checkpoint(root))   # None on a fresh run
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from decoding.run_folder import atomic_torch_save, remove_stale_temps

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes go to a temporary file beside the target, then ``os.replace``.

    Local paths only (the run folders of this project); never through ``$TMPDIR``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


def remove_stale_checkpoint_temps(dirpath: str | Path) -> list[Path]:
    """Delete the temporary files a killed checkpoint writer left in ``dirpath``."""
    return remove_stale_temps(dirpath)


def last_checkpoint(root: str | Path) -> str | None:
    """``<root>/checkpoints/last.ckpt`` if it exists, else None (for ``trainer.fit(ckpt_path=...)``)."""
    path = Path(root) / CHECKPOINT_DIR / LAST
    return str(path) if path.is_file() else None


class RunCheckpoint(Checkpoint):
    """Write ``last.ckpt`` (whole state, after every evaluation) and ``best.ckpt`` (weights, ``monitor``).

    Args:
        dirpath: the checkpoint folder; ``<trainer.default_root_dir>/checkpoints`` when None.
        monitor: metric whose best value selects ``best.ckpt`` (none written when None).
        mode: ``min`` or ``max``: which value of ``monitor`` is best.
        every_n_train_steps: also rewrite ``last.ckpt`` every this many optimiser steps (for long epochs;
            a resume from the middle of an epoch restarts that epoch's data order).
        every_n_epochs: also rewrite ``last.ckpt`` at the end of every this many epochs, for loops that
            evaluate in a callback (``on_train_epoch_end``) instead of Lightning's validation loop.

    Attributes:
        last_model_path: the path of ``last.ckpt`` once written.
        best_model_path: the path of ``best.ckpt`` once written (Lightning's ``ckpt_path="best"`` reads it).
        best_model_score: the best value of ``monitor`` so far.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 (0 or null: off), got {every_n_train_steps}")
        self.dirpath, self.monitor, self.mode = dirpath, monitor, mode
        self.every_n_train_steps = every_n_train_steps or 0
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0 or null: off), got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs or 0  # for loops that evaluate in a callback, not validation
        self.last_model_path = ""
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.restore_stop = True  # a run stopped early (EarlyStopping) stays stopped when resumed
        self._evaluated = False
        self._saved_step = -1
        self._stopped = False

    # ---- state kept in the checkpoint -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score, "stopped": self._stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:
            self.best_model_score = state_dict.get("best_model_score")
        self._stopped = bool(state_dict.get("stopped")) and self.restore_stop

    # ---- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / CHECKPOINT_DIR)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and stage == "fit" and not trainer.fast_dev_run:
            remove_stale_checkpoint_temps(self.dirpath)
        best = Path(self.dirpath) / BEST
        self.best_model_path = str(best) if self.monitor and best.is_file() else ""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopped:  # resumed from the checkpoint written where the run was stopped early
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self._skip(trainer):
            return
        self._evaluated = True
        if self.monitor is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"RunCheckpoint monitors {self.monitor!r}, which the evaluation did not log; the logged "
                f"metrics are {sorted(trainer.callback_metrics)}: set monitor to one of them (or null)"
            )
        value = float(value)
        best = self.best_model_score
        better = best is None or (value < best if self.mode == "min" else value > best)
        if better and not math.isnan(value):
            self.best_model_score = value
            self.best_model_path = self._save(trainer, BEST, weights_only=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not self._skip(trainer):
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.every_n_epochs
        due = self._evaluated or bool(n and (trainer.current_epoch + 1) % n == 0)
        if due and not self._skip(trainer):
            self._save_last(trainer)
        self._evaluated = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step and not self._skip(trainer):
            self._save_last(trainer)

    # ---- writing ----------------------------------------------------------------------------------
    @staticmethod
    def _skip(trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run)  # a smoke test never writes into the run folder

    def _save_last(self, trainer: L.Trainer) -> None:
        self._stopped = bool(trainer.should_stop)
        self.last_model_path = self._save(trainer, LAST, weights_only=False)
        self._saved_step = trainer.global_step

    def _save(self, trainer: L.Trainer, name: str, weights_only: bool) -> str:
        path = str(Path(self.dirpath) / name)
        trainer.save_checkpoint(path, weights_only=weights_only)
        return path
