"""A progress bar over the epochs of a Lightning fit (one line, the latest training loss beside it)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L


class EpochBar(L.Callback):
    """A tqdm bar that advances once per training epoch (Lightning's own bar restarts every epoch).

    Args:
        desc: the bar's label.
        leave: keep the finished bar on screen (False for bars nested in an outer one).
    """

    def __init__(self, desc: str, leave: bool = True) -> None:
        self.desc = desc
        self.leave = leave
        self._bar: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_epochs,
            initial=trainer.current_epoch,
            desc=self.desc,
            unit="epoch",
            leave=self.leave,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = next((v for k, v in trainer.callback_metrics.items() if "loss" in k), None)
        if self._bar is not None:
            self._bar.update(1)
            if loss is not None and math.isfinite(float(loss)):
                self._bar.set_postfix(loss=f"{float(loss):.3f}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
