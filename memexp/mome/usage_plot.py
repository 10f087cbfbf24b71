"""``ExpertUsagePlot``: the histogram of facts per used expert, drawn at the end of ``fit``.

:class:`~memexp.mome.tuning.MoMETuning` adds it itself (``configure_callbacks``); it reads the module's
``usage`` (``(E,)`` facts per expert, set when phase 2 starts) and writes
``<default_root_dir>/expert_usage.png`` (also logged to wandb under ``mome/expert_usage``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

FILE = "expert_usage.png"


def plot_usage(usage: torch.Tensor, path: Path) -> Path:
    """Write the histogram of ``usage`` ``(E,)`` over the used experts (count > 0) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = usage[usage > 0]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(used.numpy(), bins=range(1, int(used.max()) + 2) if used.numel() else 1)
    ax.set(xlabel="facts per expert (used experts)", ylabel="experts", title="MoME expert usage")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class ExpertUsagePlot(L.Callback):
    """At the end of ``fit`` (rank 0), plot the module's expert usage into the run folder."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        usage = getattr(pl_module, "usage", None)
        if not trainer.is_global_zero or usage is None:
            return
        path = plot_usage(usage, Path(trainer.default_root_dir) / FILE)
        logger = pl_module.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "log") and type(logger).__name__ == "WandbLogger":
            import wandb

            experiment.log({"mome/expert_usage": wandb.Image(str(path))})
