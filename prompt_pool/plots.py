"""PNG figures of a run: the accuracy-matrix heatmap and the per-task prompt-usage histogram."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from decoding.run_folder import atomic_savefig


def plot_accuracy_matrix(
    acc: torch.Tensor, path: str | Path, upto: int | None = None, title: str | None = None
) -> Path:
    """Heatmap of A[i, t] (rows: evaluated task i, columns: after training task t), in %.

    Rows go down and columns right, so cells below the diagonal (i > t) are tasks not yet trained;
    NaN cells are left blank. ``title`` defaults to "accuracy A[i, t] (%)"; the folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = acc.clone().double()
    if upto is not None:
        a[:, upto + 1 :] = math.nan
    n = a.shape[0]
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))  # no pyplot: no global backend change
    ax = fig.subplots()
    im = ax.imshow(a.numpy(), vmin=0, vmax=100, cmap="viridis")
    for i in range(n):
        for t in range(n):
            if not math.isnan(float(a[i, t])):
                ax.text(
                    t,
                    i,
                    f"{float(a[i, t]):.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if a[i, t] < 60 else "black",
                )
    ax.set_xlabel("after training task t")
    ax.set_ylabel("evaluated on task i")
    ax.set_title(title or "accuracy A[i, t] (%)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)  # a kill never leaves half a PNG
    return path


def plot_prompt_usage(usage: torch.Tensor, path: str | Path) -> Path:
    """Grouped bars: how often each prompt id was selected while training each task.  usage: (tasks, M)."""
    path = Path(path)
    tasks, m = usage.shape
    fig = Figure(figsize=(max(4.0, 0.35 * m * max(1, tasks) ** 0.5), 3))
    ax = fig.subplots()
    width = 0.8 / tasks
    total = usage.sum(dim=1, keepdim=True).clamp(min=1)
    share = (usage / total).numpy()
    for t in range(tasks):
        ax.bar([j + t * width for j in range(m)], share[t], width=width, label=f"task {t}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(m)], [str(j) for j in range(m)])
    ax.set_xlabel("prompt id")
    ax.set_ylabel("share of selections")
    ax.set_title("prompt usage per task (training)")
    ax.legend(fontsize=6, ncol=min(tasks, 5))
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)  # a kill never leaves half a PNG
    return path
