"""Task-sequence runner: fit task after task with a fresh Trainer, fill A[i, t], resume after a kill.

    for t in tasks (from the saved state on resume):
        seed(seed + t); learner.begin_task(t, classes)
        Trainer().fit(learner, train_loader(t))            # fresh Adam per task
        learner.end_task(t, train_set(t))                  # replay buffer, EWC Fisher, LwF snapshot
        Trainer.validate on every task's test set -> A[:, t]
        save state (atomic) + accuracy heatmap + prompt-usage histogram (PNG, wandb)

Rows of A with i > t (tasks not trained yet) are evaluated too when ``eval_future_tasks`` (needed by
forward transfer); the accuracy of the untrained model on each task is the FWT baseline b_i.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch

from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.learner import ContinualLearner
from prompt_pool.metrics import average_incremental_accuracy, summarise
from prompt_pool.plots import plot_accuracy_matrix, plot_prompt_usage

log = logging.getLogger(__name__)


@dataclass
class RunnerConfig:
    """How the sequence runs.

    Args:
        out_dir: results folder (state.pt, accuracy_matrix.csv, results.json, PNG plots).
        resume: continue from ``out_dir/state.pt`` if present; if False an existing run is an error.
        eval_future_tasks: also evaluate tasks not trained yet (forward transfer needs it).
        seed: base seed; task t trains with seed + t.
        plots: write PNG plots (and log them to wandb when the trainer has a WandbLogger).
    """

    out_dir: str = "runs/prompt_pool"
    resume: bool = True
    eval_future_tasks: bool = True
    seed: int = 0
    plots: bool = True


@dataclass
class SequenceResult:
    """Outputs of a run."""

    accuracy: torch.Tensor  # (T, T) A[i, t] in %, NaN where not evaluated
    correct: torch.Tensor  # (T, T) correct counts
    totals: torch.Tensor  # (T,) test-set sizes
    baseline: torch.Tensor | None  # (T,) accuracy before training (FWT's b_i)
    usage: torch.Tensor | None  # (T, M) prompt selections per task (L2P only)
    metrics: dict[str, float] = field(default_factory=dict)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class TaskSequenceRunner:
    """Runs a learner over a data module's task sequence.

    Args:
        config: runner options.
        trainer_factory: returns a fresh ``L.Trainer`` for a task (max_epochs = epochs per task,
            gradient clipping, logger...); called once per task and once for the initial evaluation.
    """

    def __init__(self, config: RunnerConfig, trainer_factory: Callable[[], L.Trainer]) -> None:
        self.cfg = config
        self.trainer_factory = trainer_factory
        self.out = Path(config.out_dir)

    def _evaluate(
        self, learner: ContinualLearner, dm: TaskSequenceDataModule, upto: int, trainer: L.Trainer
    ) -> tuple[list[int], list[int]]:
        n = dm.num_tasks - 1 if self.cfg.eval_future_tasks else upto
        learner.eval_class_masks = [t.classes for t in dm.tasks[: n + 1]] if dm.setting == "task" else None
        trainer.validate(learner, dataloaders=dm.test_loaders(n), verbose=False)
        return learner.eval_counts()

    def run(self, learner: ContinualLearner, dm: TaskSequenceDataModule) -> SequenceResult:
        """Train the whole sequence (or its remainder after a kill) and return A and the metrics."""
        if learner.num_classes < dm.num_classes:
            raise ValueError(
                f"the learner's head has {learner.num_classes} classes but the data has "
                f"{dm.num_classes}; set model num_classes={dm.num_classes}."
            )
        T = dm.num_tasks
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "state.pt"
        correct = torch.full((T, T), -1, dtype=torch.long)
        totals = torch.tensor([len(t.test) for t in dm.tasks])
        usage = torch.zeros(T, learner.pool.pool_size, dtype=torch.long) if hasattr(learner, "pool") else None
        baseline, start = None, 0
        if state_path.exists():
            if not self.cfg.resume:
                raise FileExistsError(
                    f"{state_path} exists; pass resume=True to continue it or choose a new out_dir."
                )
            st = torch.load(state_path, map_location="cpu", weights_only=True)
            learner.before_load_state(st["model"])
            learner.load_state_dict(st["model"])
            correct, start, baseline = st["correct"], int(st["next_task"]), st.get("baseline")
            learner.seen_classes, learner.step_offset = st["seen_classes"].tolist(), int(st["step_offset"])
            if usage is not None and "usage" in st:
                usage = st["usage"]
            log.info("resuming %s at task %d", self.out, start)
        elif self.cfg.eval_future_tasks and not dm.joint:
            L.seed_everything(self.cfg.seed, workers=True)
            c, n = self._evaluate(learner, dm, 0, self.trainer_factory())
            baseline = 100.0 * torch.tensor(c, dtype=torch.float64) / torch.tensor(n)
        stages = (
            [(T - 1, sorted({c for t in dm.tasks for c in t.classes}))]
            if dm.joint
            else [(t.index, t.classes) for t in dm.tasks]
        )
        for t, classes in stages:
            if t < start:
                continue
            L.seed_everything(self.cfg.seed + t, workers=True)
            learner.begin_task(t, classes)
            trainer = self.trainer_factory()
            trainer.fit(learner, train_dataloaders=dm.train_loader(t, seed=self.cfg.seed + t))
            learner.end_task(t, dm.train_dataset(t))
            c, _ = self._evaluate(learner, dm, t, trainer)
            correct[: len(c), t] = torch.tensor(c)
            if usage is not None:
                usage[t] = learner.pool.task_counts.cpu()
            acc = self._accuracy(correct, totals)
            _atomic_save(
                {
                    "model": learner.state_dict(),
                    "correct": correct,
                    "next_task": torch.tensor(t + 1),
                    "baseline": baseline,
                    "seen_classes": torch.tensor(learner.seen_classes),
                    "step_offset": torch.tensor(learner.step_offset),
                    **({"usage": usage} if usage is not None else {}),
                },
                state_path,
            )
            self._report(trainer, acc, usage, t, T)
        acc = self._accuracy(correct, totals)
        result = SequenceResult(acc, correct, totals, baseline, usage)
        result.metrics = (
            summarise(acc, baseline) if not dm.joint else {"average_accuracy": float(acc[:, -1].mean())}
        )
        if not dm.joint:
            result.metrics["average_incremental_accuracy"] = average_incremental_accuracy(
                correct.clamp(min=0), totals
            )
        self._write(result)
        return result

    @staticmethod
    def _accuracy(correct: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
        acc = 100.0 * correct.to(torch.float64) / totals[:, None]
        return acc.masked_fill(correct < 0, math.nan)

    def _report(
        self, trainer: L.Trainer, acc: torch.Tensor, usage: torch.Tensor | None, t: int, T: int
    ) -> None:
        col = acc[: t + 1, t]
        metrics = {"cl/average_accuracy": float(col.mean()), "cl/task": t}
        for i in range(t + 1):
            metrics[f"cl/acc_task{i}"] = float(acc[i, t])
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
        log.info("after task %d: A[:, %d] = %s", t, t, [round(float(v), 2) for v in col])
        if not self.cfg.plots:
            return
        paths = [plot_accuracy_matrix(acc, self.out / "accuracy_matrix.png", upto=t)]
        if usage is not None:
            paths.append(plot_prompt_usage(usage[: t + 1], self.out / f"prompt_usage_task{t}.png"))
        log_image = getattr(trainer.logger, "log_image", None)
        if callable(log_image):
            for key, p in zip(("accuracy_matrix", "prompt_usage"), paths):
                log_image(key=key, images=[str(p)])

    def _write(self, r: SequenceResult) -> None:
        import numpy as np

        np.savetxt(self.out / "accuracy_matrix.csv", r.accuracy.numpy(), delimiter=",", fmt="%.4f")
        payload = {
            "metrics": r.metrics,
            "accuracy_matrix": r.accuracy.tolist(),
            "totals": r.totals.tolist(),
            "baseline": None if r.baseline is None else r.baseline.tolist(),
            "usage": None if r.usage is None else r.usage.tolist(),
            "config": asdict(self.cfg),
        }
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=True))
        os.replace(tmp, self.out / "results.json")
