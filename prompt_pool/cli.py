"""``prompt-pool`` command line: run a whole continual task sequence from a YAML config.

    prompt-pool fit --config configs/prompt_pool/split_digits.yaml
    prompt-pool fit --config configs/prompt_pool/split_digits.yaml --model.pull_coef 0.1 --runner.seed 1
    prompt-pool fit --config configs/prompt_pool/baselines/ewc.yaml --print_config

``model`` is any :class:`~prompt_pool.learner.ContinualLearner` (``L2P``, ``FineTune``, ``EWC``, ``LwF``)
by ``class_path``; ``data`` is a :class:`~prompt_pool.datamodule.TaskSequenceDataModule`; ``trainer``
holds the per-task Trainer settings (``max_epochs`` = epochs per task, gradient clipping, logger);
``runner`` is :class:`~prompt_pool.runner.RunnerConfig` (output folder, resume, seed).
``data.num_classes`` and ``data.batch_size`` are linked into the model.
"""

from __future__ import annotations

import json
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.learner import ContinualLearner
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 5,
    "gradient_clip_val": 1.0,
    "gradient_clip_algorithm": "norm",
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "memexp-prompt_pool", "offline": True, "save_dir": "runs"},
    },
}


class PromptPoolCLI(LightningCLI):
    """LightningCLI whose ``fit`` runs the whole task sequence (one fresh Trainer per task)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunnerConfig, "runner")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.init_args.batch_size")

    def _new_trainer(self) -> L.Trainer:
        cfg = dict(self._get(self.config_init, "trainer", default={}))
        cfg["callbacks"] = list(cfg.get("callbacks") or [])
        return self.trainer_class(**cfg)

    def fit(self, model: ContinualLearner, datamodule: TaskSequenceDataModule, **_: Any) -> None:
        """Run the task sequence and print the final metrics as JSON."""
        runner_cfg = self._get(self.config_init, "runner")
        if not isinstance(runner_cfg, RunnerConfig):
            runner_cfg = RunnerConfig(**vars(runner_cfg))
        if datamodule.augment and getattr(model, "cache_queries", False):
            model.cache_queries = False  # augmented inputs change every epoch: no per-sample cache
        result = TaskSequenceRunner(runner_cfg, self._new_trainer).run(model, datamodule)
        print(json.dumps({"out_dir": runner_cfg.out_dir, **result.metrics}, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``prompt-pool`` console script."""
    PromptPoolCLI(
        ContinualLearner,
        TaskSequenceDataModule,
        subclass_mode_model=True,
        save_config_callback=None,
        auto_configure_optimizers=False,
        trainer_defaults=TRAINER_DEFAULTS,
        args=argv,
        parser_kwargs={"description": __doc__},
    )


if __name__ == "__main__":
    main()
