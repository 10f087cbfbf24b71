"""Task-sequence runner: fit task after task with a fresh Trainer, fill A[i, t], resume after a kill.

    for t in tasks (from the saved state on resume):
        seed(seed + t); trainer = trainer_factory() (+ the runner's PromptUsage add-on)
        addon.begin_task(...) for the trainer's add-ons; learner.begin_task(t, classes)
        trainer.fit(learner, train_loader(t))              # fresh Adam per task
        learner.end_task(...); addon.end_task(...)          # replay buffer, EWC Fisher, LwF snapshot
        Trainer.validate on every task's test set -> A[:, t]
        save state (learner, counts, add-ons; atomic) + accuracy heatmap + prompt-usage histogram

Every decoding head of the learner's ``eval_heads`` (``sled``, ``dola``, ``dera:lam=2``...) fills its own
matrix in the same evaluation pass; the plain argmax keeps today's names (``accuracy_matrix.csv``,
``cl/final/average_accuracy``), a head ``H`` gets ``heads/<H>/`` files and ``cl/final/H/...`` metrics.

Rows of A with i > t (tasks not trained yet) are evaluated too when ``eval_future_tasks`` (needed by
forward transfer); the accuracy of the untrained model on each task is the FWT baseline b_i.

``out_dir`` follows the run-folder rule of :mod:`decoding.run_folder`: it holds one configuration
(``run_config.json``); other settings are refused (naming them) unless ``overwrite``; a finished run
(``results.json``) is refused; an unfinished one (``state.pt``) continues only with ``resume``. A refused
start writes nothing. ``write=False`` (``fast_dev_run``) neither reads nor writes ``out_dir``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from decoding.errors import UserError, one_line
from decoding.run_folder import (
    RUN_CONFIG_FILE,
    RunLayout,
    RunState,
    atomic_file,
    atomic_torch_save,
    atomic_write_json,
)
from prompt_pool.addons import ContinualAddon, PromptUsage, addons_of
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.heads import check_heads_fit, head_slug
from prompt_pool.learner import ContinualLearner
from prompt_pool.metrics import average_incremental_accuracy, summarise
from prompt_pool.plots import plot_accuracy_matrix, plot_prompt_usage

log = logging.getLogger(__name__)


@dataclass
class RunnerConfig:
    """How the sequence runs.

    Args:
        out_dir: the run folder (run_config.json, state.pt, accuracy_matrix.csv, results.json, PNG plots,
            wandb logs); one folder holds one configuration.
        resume: continue the unfinished run in ``out_dir`` (same settings) at the task it was in.
        overwrite: delete the run in ``out_dir`` (finished or not, any settings) and start again.
        eval_future_tasks: also evaluate tasks not trained yet (forward transfer needs it).
        seed: base seed; task t trains with seed + t.
        plots: write PNG plots (and log them to wandb when the trainer has a WandbLogger).
    """

    out_dir: str = "runs/prompt_pool"
    resume: bool = False
    overwrite: bool = False
    eval_future_tasks: bool = True
    seed: int = 0
    plots: bool = True

    def __post_init__(self) -> None:
        if not str(self.out_dir).strip():
            raise UserError("runner.out_dir is empty; pass --runner.out_dir <folder>.")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"runner.seed must be in [0, {MAX_SEED}], got {self.seed}.")


MAX_SEED = 2**31 - 1  # task t seeds seed + t: stays inside Lightning's uint32 range
RESUME_FLAG, OVERWRITE_FLAG = "--runner.resume true", "--runner.overwrite true"
STATE_FILE, RESULTS_FILE = "state.pt", "results.json"
HEADS_DIR = "heads"  # heads/<head>/accuracy_matrix.{csv,png}, results.json: one folder per decoding head
RUN_LAYOUT = RunLayout(  # an unfinished run is one with a state.pt (or a run_config.json)
    results=RESULTS_FILE,
    traces=(STATE_FILE,),
    outputs=(RUN_CONFIG_FILE, STATE_FILE, RESULTS_FILE, "accuracy_matrix.csv", "accuracy_matrix.png")
    + ("prompt_usage_task*.png", HEADS_DIR, "wandb"),
    folder_flag="--runner.out_dir",
    resume_flag=RESUME_FLAG,
    overwrite_flag=OVERWRITE_FLAG,
)


def runner_settings(cfg: RunnerConfig) -> dict[str, Any]:
    """The runner options that change results (recorded in the run folder)."""
    return {"runner.eval_future_tasks": cfg.eval_future_tasks, "runner.seed": cfg.seed}


def check_out_dir(cfg: RunnerConfig, settings: Mapping[str, Any]) -> RunState:
    """Apply the run-folder rule to ``cfg.out_dir`` for a run with ``settings``; writes nothing.

    Raises:
        UserError: the start is refused (other settings, finished run, unfinished run without resume...).
    """
    return RUN_LAYOUT.check(cfg.out_dir, settings, resume=cfg.resume, overwrite=cfg.overwrite)


def check_learner_fits(learner: ContinualLearner, dm: TaskSequenceDataModule) -> None:
    """Raise :class:`UserError` when the learner cannot run on the data (classes, image shape, heads)."""
    if learner.num_classes < dm.num_classes:
        raise UserError(
            f"the learner's head has {learner.num_classes} classes but the data has "
            f"{dm.num_classes}; set model num_classes={dm.num_classes}."
        )
    vocab = min(len(t.classes) for t in dm.tasks) if dm.setting == "task" else learner.num_classes
    check_heads_fit(
        learner.heads, learner.backbone.depth, vocab, type(learner).__name__, learner.has_reference
    )
    x = dm.test_loaders(0)[0].dataset[0][0][None]  # (1, C, H, W) as the model will see it
    try:
        learner.backbone.check_input(x)
    except ValueError as err:
        raise UserError(f"data and model do not fit: {err}") from None


@dataclass
class SequenceResult:
    """Outputs of a run."""

    accuracy: torch.Tensor  # (T, T) A[i, t] in %, NaN where not evaluated
    correct: torch.Tensor  # (T, T) correct counts
    totals: torch.Tensor  # (T,) test-set sizes
    baseline: torch.Tensor | None  # (T,) accuracy before training (FWT's b_i)
    usage: torch.Tensor | None  # (T, M) prompt selections per task (L2P only)
    metrics: dict[str, float] = field(default_factory=dict)
    heads: dict[str, SequenceResult] = field(default_factory=dict)  # per eval_heads entry (usage None)


class TaskSequenceRunner:
    """Runs a learner over a data module's task sequence.

    Args:
        config: runner options.
        trainer_factory: returns a fresh ``L.Trainer`` for a task (max_epochs = epochs per task,
            gradient clipping, logger...); called once per task and once for the initial evaluation.
        settings: the run's results-relevant settings, recorded in ``out_dir`` and compared on the next
            start (default: the runner's own, :func:`runner_settings`).
        write: False for a dry run (``fast_dev_run``): ``out_dir`` is neither read nor written.
    """

    def __init__(
        self,
        config: RunnerConfig,
        trainer_factory: Callable[[], L.Trainer],
        settings: Mapping[str, Any] | None = None,
        write: bool = True,
    ) -> None:
        self.cfg = config
        self.trainer_factory = trainer_factory
        self.out = Path(config.out_dir)
        self.settings = dict(runner_settings(config) if settings is None else settings)
        self.write = write

    def _evaluate(
        self, learner: ContinualLearner, dm: TaskSequenceDataModule, upto: int, trainer: L.Trainer
    ) -> tuple[list[int], dict[str, list[int]]]:
        """Correct counts per evaluated task: of the plain argmax, and ``{head spec: counts}``."""
        n = dm.num_tasks - 1 if self.cfg.eval_future_tasks else upto
        learner.eval_class_masks = [t.classes for t in dm.tasks[: n + 1]] if dm.setting == "task" else None
        trainer.validate(learner, dataloaders=dm.test_loaders(n), verbose=False)
        return learner.eval_counts()[0], learner.eval_head_counts()

    def run(self, learner: ContinualLearner, dm: TaskSequenceDataModule) -> SequenceResult:
        """Train the whole sequence (or its remainder after a kill) and return A and the metrics."""
        check_learner_fits(learner, dm)
        T = dm.num_tasks
        state = self._start() if self.write else RunState.NEW
        state_path = self.out / STATE_FILE
        correct = torch.full((T, T), -1, dtype=torch.long)
        head_correct = {spec: correct.clone() for spec in learner.heads}
        head_baseline: dict[str, torch.Tensor] = {}
        totals = torch.tensor([len(t.test) for t in dm.tasks])
        usage_tracker = PromptUsage()
        baseline, start, addon_states = None, 0, None
        if state is RunState.RESUME and state_path.exists():
            st = self._load_state(learner, state_path)
            correct, start, baseline = st["correct"], int(st["next_task"]), st.get("baseline")
            head_correct.update(st.get("head_correct", {}))
            head_baseline.update(st.get("head_baseline", {}))
            learner.seen_classes, learner.step_offset = st["seen_classes"].tolist(), int(st["step_offset"])
            addon_states = st.get("addons", {"types": [], "states": []})
            log.info("resuming %s at task %d", self.out, start)
        elif self.cfg.eval_future_tasks and not dm.joint:
            L.seed_everything(self.cfg.seed, workers=True)
            c, hc = self._evaluate(learner, dm, 0, self._trainer(usage_tracker))
            baseline = 100.0 * torch.tensor(c, dtype=torch.float64) / totals
            head_baseline = {
                spec: 100.0 * torch.tensor(v, dtype=torch.float64) / totals for spec, v in hc.items()
            }
        stages = (
            [(T - 1, sorted({c for t in dm.tasks for c in t.classes}))]
            if dm.joint
            else [(t.index, t.classes) for t in dm.tasks]
        )
        trainer, addons = None, None
        for t, classes in stages:
            if t < start:
                continue
            L.seed_everything(self.cfg.seed + t, workers=True)
            trainer = self._trainer(usage_tracker)
            addons = self._same_addons(addons_of(trainer), addons)
            if addon_states is not None:
                self._load_addons(addons, addon_states)
                addon_states = None
            for addon in addons:
                addon.begin_task(learner, t, classes)
            learner.begin_task(t, classes)
            trainer.fit(learner, train_dataloaders=dm.train_loader(t, seed=self.cfg.seed + t))
            learner.end_task(t, dm.train_dataset(t))
            for addon in addons:
                addon.end_task(learner, t, dm.train_dataset(t))
            c, hc = self._evaluate(learner, dm, t, trainer)
            correct[: len(c), t] = torch.tensor(c)
            for spec, v in hc.items():
                head_correct[spec][: len(v), t] = torch.tensor(v)
            usage = usage_tracker.matrix(T)
            acc = self._accuracy(correct, totals)
            if self.write:
                atomic_torch_save(
                    {
                        "model": learner.state_dict(),
                        "correct": correct,
                        "next_task": torch.tensor(t + 1),
                        "baseline": baseline,
                        "seen_classes": torch.tensor(learner.seen_classes),
                        "step_offset": torch.tensor(learner.step_offset),
                        "head_correct": head_correct,
                        "head_baseline": head_baseline,
                        "addons": {
                            "types": [type(a).__name__ for a in addons],
                            "states": [a.state_dict() for a in addons],
                        },
                    },
                    state_path,
                )
            self._report(trainer, learner.step_offset, acc, usage, t, T)
            for spec, hc_t in head_correct.items():
                self._report(
                    trainer, learner.step_offset, self._accuracy(hc_t, totals), None, t, T, head=spec
                )
        result = self._result(correct, totals, baseline, usage_tracker.matrix(T), dm.joint)
        result.heads = {
            spec: self._result(c, totals, head_baseline.get(spec), None, dm.joint)
            for spec, c in head_correct.items()
        }
        final = {f"cl/final/{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        for spec, r in result.heads.items():
            final.update(
                {f"cl/final/{spec}/{k}": v for k, v in r.metrics.items() if isinstance(v, (int, float))}
            )
        self._log(
            trainer, learner.step_offset, final
        )  # forgetting, BWT, FWT... as logged metrics, not only results.json
        if self.write:
            self._write(result)
        return result

    def _start(self) -> RunState:
        """Apply the run-folder rule, clear an overwritten run, record the settings."""
        state = check_out_dir(self.cfg, self.settings)
        RUN_LAYOUT.start(self.out, self.settings, state)
        return state

    def _trainer(self, usage: PromptUsage) -> L.Trainer:
        """A fresh Trainer from the factory, with the runner's usage tracker among its callbacks."""
        trainer = self.trainer_factory()
        trainer.callbacks.append(usage)
        return trainer

    @staticmethod
    def _same_addons(new: list[ContinualAddon], before: list[ContinualAddon] | None) -> list[ContinualAddon]:
        """The add-ons of this task's Trainer, which must be the instances of the previous task's."""
        if before is not None and [id(a) for a in new] != [id(a) for a in before]:
            raise ValueError(
                "the trainer factory gave this task's Trainer other add-on instances than the previous "
                "task's; create the add-ons once and pass the same objects to every Trainer"
            )
        return new

    @staticmethod
    def _load_addons(addons: list[ContinualAddon], saved: dict[str, Any]) -> None:
        """Restore the add-ons' states of a killed run (the same add-ons, in the same order)."""
        names = [type(a).__name__ for a in addons]
        if names != list(saved["types"]):
            raise UserError(
                f"cannot resume: the run had the add-ons {list(saved['types'])} and this one has {names}; "
                f"pass {OVERWRITE_FLAG} to start again"
            )
        for addon, state in zip(addons, saved["states"]):
            addon.load_state_dict(state)

    def _load_state(self, learner: ContinualLearner, path: Path) -> dict[str, Any]:
        """The saved state of an unfinished run, loaded into ``learner`` (tensors only, no code)."""
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
            learner.load_state_dict(st["model"])
        except Exception as err:  # noqa: BLE001 - a damaged or foreign state file: one clear line
            raise UserError(
                f"cannot resume from {str(path)!r} ({type(err).__name__}: {one_line(str(err))[:240]}); pass "
                f"{OVERWRITE_FLAG} to start again"
            ) from None
        return st

    @classmethod
    def _result(
        cls,
        correct: torch.Tensor,
        totals: torch.Tensor,
        baseline: torch.Tensor | None,
        usage: torch.Tensor | None,
        joint: bool,
    ) -> SequenceResult:
        """A and its metrics from the correct counts (T, T)."""
        acc = cls._accuracy(correct, totals)
        result = SequenceResult(acc, correct, totals, baseline, usage)
        if joint:
            result.metrics = {"average_accuracy": float(acc[:, -1].mean())}
            return result
        result.metrics = summarise(acc, baseline)
        result.metrics["average_incremental_accuracy"] = average_incremental_accuracy(
            correct.clamp(min=0), totals
        )
        return result

    @staticmethod
    def _accuracy(correct: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
        acc = 100.0 * correct.to(torch.float64) / totals[:, None]
        return acc.masked_fill(correct < 0, math.nan)

    def _report(
        self,
        trainer: L.Trainer,
        step: int,
        acc: torch.Tensor,
        usage: torch.Tensor | None,
        t: int,
        T: int,
        head: str | None = None,
    ) -> None:
        """Log column t of A (``cl/...``; ``cl/<head>/...`` for a decoding head) and plot A."""
        col = acc[: t + 1, t]
        p = "cl/" if head is None else f"cl/{head}/"
        metrics = {f"{p}average_accuracy": float(col.mean()), "cl/task": t}
        for i in range(t + 1):
            metrics[f"{p}acc_task{i}"] = float(acc[i, t])
        self._log(trainer, step, metrics)
        log.info(
            "after task %d%s: A[:, %d] = %s",
            t,
            f" ({head})" if head else "",
            t,
            [round(float(v), 2) for v in col],
        )
        if not (self.cfg.plots and self.write):
            return
        folder = self.out if head is None else self.out / HEADS_DIR / head_slug(head)
        title = None if head is None else f"accuracy A[i, t] (%), head {head}"
        paths = [plot_accuracy_matrix(acc, folder / "accuracy_matrix.png", upto=t, title=title)]
        if usage is not None:
            paths.append(plot_prompt_usage(usage[: t + 1], self.out / f"prompt_usage_task{t}.png"))
        log_image = getattr(trainer.logger, "log_image", None)
        if callable(log_image):
            keys = ("accuracy_matrix", "prompt_usage") if head is None else (f"accuracy_matrix/{head}",)
            for key, p in zip(keys, paths):
                log_image(key=key, images=[str(p)])

    @staticmethod
    def _log(trainer: L.Trainer | None, step: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at ``step`` (the learner's steps so far) and flush: the task loop runs after
        ``fit`` returned, when Lightning no longer saves the logger (a CSV logger's last rows would stay in
        memory)."""
        for logger in trainer.loggers if trainer is not None else []:
            logger.log_metrics(metrics, step=step)
            logger.save()

    def _write(self, r: SequenceResult) -> None:
        """The CSVs and each head's results, then ``results.json`` (the finished-run marker), each
        written atomically."""
        import numpy as np

        for head, hr in r.heads.items():
            folder = self.out / HEADS_DIR / head_slug(head)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(folder / "accuracy_matrix.csv", "w") as fh:
                np.savetxt(fh, hr.accuracy.numpy(), delimiter=",", fmt="%.4f")
            atomic_write_json(folder / RESULTS_FILE, {"head": head, **self._payload(hr)})
        with atomic_file(self.out / "accuracy_matrix.csv", "w") as fh:
            np.savetxt(fh, r.accuracy.numpy(), delimiter=",", fmt="%.4f")
        payload = {
            **self._payload(r),
            "usage": None if r.usage is None else r.usage.tolist(),
            "heads": {head: self._payload(hr) for head, hr in r.heads.items()},
            "config": self.settings,
        }
        atomic_write_json(self.out / RESULTS_FILE, payload)

    @staticmethod
    def _payload(r: SequenceResult) -> dict[str, Any]:
        return {
            "metrics": r.metrics,
            "accuracy_matrix": r.accuracy.tolist(),
            "totals": r.totals.tolist(),
            "baseline": None if r.baseline is None else r.baseline.tolist(),
        }
