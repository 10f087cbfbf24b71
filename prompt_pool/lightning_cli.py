"""The LightningCLI behind ``prompt-pool fit``: one Trainer per task, the run-folder rule, checks first.

Order of a start (nothing is written before step 4, so a refused start leaves no trace):

1. parse (an unknown option or a badly typed value: one line, exit 2);
2. ``before_instantiate_classes``: ``WANDB_MODE`` and the logger folder, trainer settings, the
   run-folder rule on ``runner.out_dir`` (settings that differ are named);
3. data, then model, built and checked (every bad value: :class:`~decoding.errors.UserError`), then
   whether they fit each other (classes, image shape);
4. ``fit``: the runner records the settings in ``run_config.json`` and runs (or resumes) the sequence.

``fast_dev_run`` runs one batch per task and never reads or writes the run folder.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from decoding.errors import UserError, concise_parser_errors, one_line
from decoding.run_folder import flatten
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.learner import ContinualLearner
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner, check_learner_fits, check_out_dir

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 5,
    "gradient_clip_val": 1.0,
    "gradient_clip_algorithm": "norm",
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "logger": {  # save_dir: the run folder (runner.out_dir) unless set; WANDB_MODE overrides offline
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "memexp-prompt_pool", "offline": True},
    },
}

# Settings that do not change results: left out of run_config.json, so changing them never refuses a
# run (the folder itself, how to start, logging and display, data-loading workers).
NOT_RESULTS = (
    "config",
    "seed_everything",  # the runner seeds every task itself (runner.seed)
    "model.init_args.num_classes",  # linked from the data when the model is built
    "runner.out_dir",
    "runner.resume",
    "runner.overwrite",
    "runner.plots",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "trainer.profiler",
    "trainer.fast_dev_run",
    "data.loader.num_workers",
)


def run_settings(cfg: Namespace) -> dict[str, Any]:
    """The resolved settings of a ``fit`` that change its results, flat (``model.init_args.lr``...)."""
    flat = flatten(cfg.as_dict())
    return {k: flat[k] for k in sorted(flat) if not any(k == p or k.startswith(f"{p}.") for p in NOT_RESULTS)}


def _loggers(trainer: Namespace) -> list[Any]:
    value = trainer.get("logger")
    return list(value) if isinstance(value, list) else [value]


def _is_wandb(logger: Any) -> bool:
    return isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("WandbLogger")


def apply_wandb_settings(trainer: Namespace, out_dir: str) -> None:
    """Honour ``WANDB_MODE`` over the config's ``offline`` and put wandb's files in the run folder.

    ``WANDB_MODE=disabled`` removes the wandb logger (nothing is logged or written), ``offline`` /
    ``dryrun`` and ``online`` / ``run`` set ``offline``; a WandbLogger whose ``save_dir`` is left at
    its default writes into ``out_dir``.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    loggers = _loggers(trainer)
    if mode == "disabled":
        kept = [lg for lg in loggers if lg is not None and not _is_wandb(lg)]
        trainer.logger = kept if len(kept) > 1 else (kept[0] if kept else False)
        return
    for lg in filter(_is_wandb, loggers):
        args = lg.get("init_args") or Namespace()
        if mode in ("offline", "dryrun"):
            args.offline = True
        elif mode in ("online", "run"):
            args.offline = False
        if args.get("save_dir") in (None, ".") and args.get("dir") is None:  # "." is WandbLogger's default
            args.save_dir = out_dir
        lg.init_args = args


def check_trainer_settings(trainer: Namespace) -> None:
    """Raise :class:`UserError` for trainer settings the task loop cannot run with."""
    if trainer.get("fast_dev_run"):
        return
    epochs = trainer.get("max_epochs")
    if epochs is None or epochs < 1:
        raise UserError(
            f"trainer.max_epochs={epochs} is invalid: it is the number of epochs per task and must be "
            ">= 1; pass --trainer.max_epochs 5 (the paper's setting)."
        )
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not clip >= 0:
        raise UserError(f"trainer.gradient_clip_val={clip} is invalid: pass a value >= 0 (1.0 in L2P).")


def tidy_parse_error(message: str) -> str:
    """jsonargparse's error for a ``model.init_args`` option, without the Union bookkeeping around it.

    ``Parser key "model": Does not validate against any of the Union subtypes ... Problem with given
    class_path 'prompt_pool.l2p.L2P': Option 'poolsize' is not accepted - Expected a <class 'NoneType'>
    ...`` becomes ``Parser key "model": prompt_pool.l2p.L2P: Option 'poolsize' is not accepted``.
    """
    text = one_line(message)
    found = re.search(
        r"Problem with given class_path '([^']*)': (.*?)(?: - Expected a <class 'NoneType'>|$)", text
    )
    if "Does not validate against any of the Union subtypes" not in text or not found:
        return text
    return f"{text.split(':', 1)[0]}: {found.group(1)}: {found.group(2).strip()}"


def _user_cause(err: BaseException) -> BaseException:
    """The UserError behind jsonargparse's wrapping of an instantiation error, else the deepest cause."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain if isinstance(e, UserError)), chain[-1])


class PromptPoolCLI(LightningCLI):
    """LightningCLI whose ``fit`` runs the whole task sequence (one fresh Trainer per task)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "train_dataloaders", "val_dataloaders", "datamodule", "ckpt_path", "weights_only"}
        return {"fit": skip}  # resuming is --runner.resume true, not --ckpt_path

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = concise_parser_errors(super().init_parser(**kwargs), prog="prompt-pool")
        one_line_error = parser.error
        parser.error = lambda message, *a, **k: one_line_error(tidy_parse_error(message), *a, **k)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunnerConfig, "runner", instantiate=False)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.loader.batch_size", "model.init_args.batch_size")

    def before_instantiate_classes(self) -> None:
        """Check the settings and the run folder before anything is built or written."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        self.runner_config = RunnerConfig(**cfg.runner.as_dict())
        apply_wandb_settings(cfg.trainer, self.runner_config.out_dir)
        check_trainer_settings(cfg.trainer)
        self.dry_run = bool(cfg.trainer.get("fast_dev_run"))
        self.settings = run_settings(cfg)
        if not self.dry_run:
            check_out_dir(self.runner_config, self.settings)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # jsonargparse wraps a class's own error in a page of context
            raise _user_cause(err) from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        check_learner_fits(self.model, self.datamodule)  # before the Trainer prints anything
        return super().instantiate_trainer(**kwargs)

    def _new_trainer(self) -> L.Trainer:
        cfg = dict(self._get(self.config_init, "trainer", default={}))
        cfg["callbacks"] = list(cfg.get("callbacks") or [])
        return self.trainer_class(**cfg)

    def fit(self, model: ContinualLearner, datamodule: TaskSequenceDataModule, **_: Any) -> None:
        """Run the task sequence and print the final metrics as JSON."""
        runner = TaskSequenceRunner(self.runner_config, self._new_trainer, self.settings, not self.dry_run)
        result = runner.run(model, datamodule)
        where = {"fast_dev_run": True} if self.dry_run else {"out_dir": self.runner_config.out_dir}
        heads = {"heads": {spec: r.metrics for spec, r in result.heads.items()}} if result.heads else {}
        print(json.dumps({**where, **result.metrics, **heads}, indent=2))


def cli(args: list[str] | None, run: bool = True) -> PromptPoolCLI:
    """Build (and, by default, run) :class:`PromptPoolCLI` on ``args`` (None: the command line)."""
    return PromptPoolCLI(
        ContinualLearner,
        TaskSequenceDataModule,
        subclass_mode_model=True,
        save_config_callback=None,
        auto_configure_optimizers=False,
        seed_everything_default=False,
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
        run=run,
        parser_kwargs={"prog": "prompt-pool", "description": "Run a continual task sequence."},
    )
