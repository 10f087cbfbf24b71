"""``MemexpCLI``: LightningCLI with the run-folder rule, whole checkpoints and the results writer built in.

For ``fit`` (see :mod:`memexp.fit_folder` for the rule and :mod:`memexp.checkpointing` for the checkpoints):

- the start is checked before anything is built, so a refused start leaves no trace;
- every logger writes into the run folder (``save_dir`` follows ``--trainer.default_root_dir``) and
  ``WANDB_MODE`` wins over a config's ``offline`` flag (``disabled`` drops the wandb logger);
- a :class:`~memexp.checkpointing.RunCheckpoint` is added when the config names none; Lightning's
  ``ModelCheckpoint`` is refused (its ``last.ckpt`` is not always the last state);
- ``--resume true`` (or Lightning's ``--ckpt_path last``) continues from
  ``<run folder>/checkpoints/last.ckpt``;
- ``--trainer.fast_dev_run`` never writes into the run folder.

The model's ``backbone`` is linked to the data module's ``tokenizer``, its ``seed`` to the data module's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from decoding.errors import UserError, concise_parser_errors
from decoding.run_folder import RunState, record_run_config
from memexp.checkpoint_io import read_checkpoint
from memexp.checkpointing import RunCheckpoint, last_checkpoint
from memexp.data import FactsDataModule
from memexp.fact_tuning import FactTuning
from memexp.fit_folder import (
    CHECKPOINT_DIR,
    CKPT_LAST_FLAG,
    FIT_LAYOUT,
    RESULTS_FILE,
    open_fit_folder,
    run_settings,
)
from memexp.results import ResultsWriter

RUN_CHECKPOINT = f"{RunCheckpoint.__module__}.{RunCheckpoint.__name__}"


class RunFolderConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer, for ``fit`` only and silent under ``fast_dev_run``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not trainer.fast_dev_run:
            super().setup(trainer, pl_module, stage)


def launching_process() -> bool:
    """Whether this is the process a user started (not a rank that a DDP launcher or torchrun started)."""
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _logger_configs(trainer_cfg: Namespace) -> list[Namespace]:
    logger = trainer_cfg.get("logger")
    items = logger if isinstance(logger, list) else [logger]
    return [item for item in items if isinstance(item, Namespace) and item.get("class_path")]


def _is_wandb(logger_cfg: Namespace) -> bool:
    return logger_cfg.class_path.rsplit(".", 1)[-1] == "WandbLogger"


def apply_logging_rules(trainer_cfg: Namespace, root: str) -> None:
    """Every logger's ``save_dir`` is the run folder; ``WANDB_MODE`` wins over the config's ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        logger = trainer_cfg.get("logger")
        if isinstance(logger, list):
            trainer_cfg.logger = [lg for lg in logger if not (isinstance(lg, Namespace) and _is_wandb(lg))]
        elif isinstance(logger, Namespace) and _is_wandb(logger):
            trainer_cfg.logger = False
    for logger_cfg in _logger_configs(trainer_cfg):
        init = logger_cfg.get("init_args")
        if init is None:
            continue
        if "save_dir" in init:
            init.save_dir = root
        if _is_wandb(logger_cfg) and mode in ("offline", "dryrun", "online", "run"):
            init.offline = mode in ("offline", "dryrun")


def ensure_run_checkpoint(trainer_cfg: Namespace) -> None:
    """Refuse ``ModelCheckpoint``; add a ``RunCheckpoint`` (no monitor) when the config names none."""
    callbacks = trainer_cfg.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    names = [cb.get("class_path", "") if isinstance(cb, Namespace) else type(cb).__name__ for cb in callbacks]
    if any(name.rsplit(".", 1)[-1] == "ModelCheckpoint" for name in names):
        raise UserError(
            "lightning's ModelCheckpoint in trainer.callbacks rewrites last.ckpt only when its metric "
            f"improves and writes through $TMPDIR; replace it by class_path: {RUN_CHECKPOINT} "
            "(init_args: monitor, mode, every_n_train_steps)"
        )
    if not any(name.rsplit(".", 1)[-1] == RunCheckpoint.__name__ for name in names):
        callbacks.append(Namespace(class_path=RUN_CHECKPOINT, init_args=Namespace()))
    trainer_cfg.callbacks = callbacks


class MemexpCLI(LightningCLI):
    """LightningCLI with the run-folder rule, ``RunCheckpoint`` and ``ResultsWriter`` built in."""

    run_state: RunState | None = None
    seed: int | None = None

    def _set_seed(self) -> None:
        """Seed as LightningCLI does, quietly: "Seed set to N" is logged once the start is accepted
        (:meth:`before_fit`), so a refused start prints its one error line and nothing else."""
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        self.seed = seed_everything(None if seed is True else seed, workers=True, verbose=False)
        if self.subcommand:
            self.config[self.subcommand]["seed_everything"] = self.seed
        else:
            self.config["seed_everything"] = self.seed

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands without ``--weights_only``: memexp reads checkpoints as tensors only."""
        return {name: skip | {"weights_only"} for name, skip in LightningCLI.subcommands().items()}

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before LightningCLI reads hyperparameters from it (``fit`` takes
        only ``last``, refused otherwise in :meth:`before_instantiate_classes`)."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if sub != "fit" and path and path not in ("last", "best", "hpc", "registry"):
            read_checkpoint(path)
        super()._parse_ckpt_path()

    def _check_checkpoint(self, path: str | Path) -> None:
        """Refuse a checkpoint that is not whole or that another module, backbone or method wrote."""
        if hasattr(self.model, "check_checkpoint"):
            self.model.check_checkpoint(read_checkpoint(path), path)

    def init_parser(self, **kwargs):
        return concise_parser_errors(super().init_parser(**kwargs), prog="memexp")

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        # one seed per run: the facts, split and batch order follow the module's seed (two different values
        # also made Lightning refuse to log the merged hyperparameters)
        parser.link_arguments("model.init_args.seed", "data.init_args.seed")
        parser.add_argument(
            "--resume",
            type=bool,
            default=False,
            help="fit: continue the unfinished run in --trainer.default_root_dir from its last.ckpt "
            "(the same as --ckpt_path last)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: delete the run in --trainer.default_root_dir (finished or not) and start again",
        )
        parser.add_argument(
            "--extend",
            type=bool,
            default=False,
            help="fit: train the finished run in --trainer.default_root_dir further, from its last.ckpt; "
            "only trainer.max_epochs / max_steps / max_time may differ from its settings",
        )

    # ---- fit: checks before anything is built, the run folder after ---------------------------------
    def _fit_config(self) -> Namespace | None:
        return self.config.get("fit") if self.subcommand == "fit" else None

    def before_instantiate_classes(self) -> None:
        cfg = self._fit_config()
        if cfg is None:
            return
        root = cfg.trainer.get("default_root_dir")
        if not root:
            raise UserError("memexp fit needs a run folder: pass --trainer.default_root_dir=runs/<name>")
        apply_logging_rules(cfg.trainer, str(root))
        ensure_run_checkpoint(cfg.trainer)
        if cfg.trainer.get("fast_dev_run") or not launching_process():
            return  # the other ranks follow the decision of the launching process
        ckpt = cfg.get("ckpt_path")
        if ckpt not in (None, "last"):
            raise UserError(
                f"--ckpt_path {ckpt!r}: memexp fit resumes the run of its own folder only: pass "
                "--resume true (or --ckpt_path last: its checkpoints/last.ckpt), or point "
                "--trainer.default_root_dir at the run"
            )
        asked = bool(cfg.get("resume"))
        self.run_state = open_fit_folder(
            root,
            run_settings(cfg.as_dict()),
            resume=asked or ckpt == "last",
            overwrite=bool(cfg.get("overwrite")),
            extend=bool(cfg.get("extend")),
            resume_flag=CKPT_LAST_FLAG if ckpt == "last" and not asked else FIT_LAYOUT.resume_flag,
        )

    def before_fit(self) -> None:
        cfg = self.config["fit"]
        if self.seed is not None:
            rank_zero_info(f"Seed set to {self.seed}")
        if cfg.trainer.get("fast_dev_run"):
            return
        root = Path(self.trainer.default_root_dir)
        launcher = launching_process()
        resume = (
            self.run_state is RunState.RESUME
            if launcher
            else cfg.get("ckpt_path") or cfg.get("resume") or cfg.get("extend")
        )
        last = last_checkpoint(root) if resume else None
        if last is not None:
            self._check_checkpoint(last)
        if cfg.get("extend"):
            for cb in self.trainer.callbacks:
                if isinstance(cb, RunCheckpoint):
                    cb.restore_stop = False  # an early-stopped run trains on
        if launcher:
            if last is None:  # a new run (or an unfinished one killed before its first checkpoint)
                FIT_LAYOUT.clear(root)
            elif cfg.get("extend"):
                (root / RESULTS_FILE).unlink(missing_ok=True)  # unfinished until the extension ends
            record_run_config(root, run_settings(cfg.as_dict()))
        self.config_init["fit"]["ckpt_path"] = last
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, ResultsWriter)), None)
        if last is None and writer is not None:  # the "before" point of the curves
            writer.initial_evaluation(self.trainer, self.model, self.datamodule)

    # ---- validate / test / predict: "last" and "best" name the run folder's checkpoints --------------
    def _resolve_named_checkpoint(self) -> None:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt is not None and ckpt not in ("last", "best"):
            self._check_checkpoint(ckpt)
        if ckpt not in ("last", "best"):
            return
        path = Path(self.trainer.default_root_dir) / CHECKPOINT_DIR / f"{ckpt}.ckpt"
        if not path.is_file():
            raise UserError(
                f"--ckpt_path {ckpt}: {path} does not exist; train into --trainer.default_root_dir first "
                "(best.ckpt needs a RunCheckpoint monitor), or pass a checkpoint file"
            )
        self._check_checkpoint(path)
        self.config_init[self.subcommand]["ckpt_path"] = str(path)

    before_validate = before_test = before_predict = _resolve_named_checkpoint


def run_lightning_cli(args: list[str] | None) -> Any:
    """Build and run :class:`MemexpCLI` on ``args`` (None: the command line)."""
    return MemexpCLI(
        FactTuning,
        FactsDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [ResultsWriter()]},
        save_config_callback=RunFolderConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
