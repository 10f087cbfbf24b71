"""``memexp`` command line: LightningCLI over the memorisation modules.

    memexp fit --config configs/memexp/demo.yaml
    memexp fit --config configs/memexp/demo.yaml --ckpt_path last     # resume a killed run
    memexp fit --config configs/memexp/demo.yaml --overwrite true     # start a finished run again
    memexp fit --config configs/memexp/demo.yaml --print_config

The model's ``backbone`` is linked to the data module's ``tokenizer``. Checkpoints go to
``<default_root_dir>/checkpoints`` and results to ``<default_root_dir>`` (see :mod:`memexp.results`).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from decoding.errors import concise_parser_errors, run_cli
from memexp.data import FactsDataModule
from memexp.module import FactTuning
from memexp.results import ResultsWriter
from memexp.run_dir import CHECKPOINT_DIR, guard_run_dir


class MemexpCLI(LightningCLI):
    """LightningCLI with the run-folder guard, checkpoint folder and results writer built in."""

    def init_parser(self, **kwargs):
        return concise_parser_errors(super().init_parser(**kwargs), prog="memexp")

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="start again in a run folder that holds a finished or unfinished run (deletes its results)",
        )

    def before_fit(self) -> None:
        cfg = self.config[self.subcommand]
        root = Path(self.trainer.default_root_dir)
        guard_run_dir(root, resume=cfg.get("ckpt_path") is not None, overwrite=cfg.get("overwrite", False))
        for cb in self.trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(root / CHECKPOINT_DIR)
        if cfg.get("ckpt_path") is None:  # the "before" point of the curves
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


def _main(args: list[str] | None) -> None:
    MemexpCLI(
        FactTuning,
        FactsDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [ResultsWriter()]},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``memexp`` console script: bad input ends with one line (``--debug``: traceback)."""
    run_cli(_main, args, prog="memexp")


if __name__ == "__main__":
    main()
