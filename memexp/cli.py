"""``memexp`` command line: LightningCLI over the memorisation modules (see :mod:`memexp.lightning_cli`).

    memexp fit --config configs/memexp/demo.yaml
    memexp fit --config configs/memexp/demo.yaml --resume true           # resume a killed run
    memexp fit --config configs/memexp/demo.yaml --overwrite true        # start again
    memexp fit --config configs/memexp/demo.yaml --extend true --trainer.max_epochs=400   # train on
    memexp fit --config configs/memexp/demo.yaml --print_config

``memexp`` / ``memexp --help`` answer without importing Lightning (about 10 s on a busy 2-core machine);
``memexp fit --help`` shows every option of the full LightningCLI parser.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = ("fit", "validate", "test", "predict")
HELP = """\
usage: memexp [-h] [-c CONFIG] {fit,validate,test,predict} ...

Memorise facts exactly with a frozen HF backbone (full fine-tuning, LoRA, memory experts): a LightningCLI
over memexp.fact_tuning.FactTuning / memexp.mome.tuning.MoMETuning and memexp.data.FactsDataModule.

subcommands (memexp <subcommand> --help lists every option):
  fit        train into a run folder (--trainer.default_root_dir): checkpoints/last.ckpt after every
             evaluation, results.json, curves.csv/png, fact_evals.csv and the exported model
  validate   evaluate a model (--ckpt_path PATH)
  test       evaluate on the test facts
  predict    run the model's predict step

run folders (memexp fit):
  --resume true      resume the unfinished run in the folder from its last evaluation (= --ckpt_path last)
  --overwrite true   delete the run in the folder and start again
  --extend true      train a finished run further (a larger --trainer.max_epochs)
  --debug            show the traceback of an error

examples:
  memexp fit --config configs/memexp/demo.yaml
  memexp fit --config configs/memexp/mome_demo.yaml --trainer.default_root_dir runs/mome_1
"""


def _light(argv: list[str]) -> None:
    """Answer ``memexp`` and ``memexp --help`` without importing torch or Lightning (exits)."""
    if argv:
        sys.stdout.write(HELP)
        raise SystemExit(0)
    sys.stderr.write(f"memexp: error: choose a subcommand: {', '.join(SUBCOMMANDS)} (see memexp --help)\n")
    raise SystemExit(2)


def _main(args: list[str] | None) -> None:
    from memexp.lightning_cli import run_lightning_cli  # imports Lightning (seconds)

    run_lightning_cli(args)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``memexp`` console script: bad input ends with one line (``--debug``: traceback)."""
    argv = [a for a in (sys.argv[1:] if args is None else args) if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        _light(argv)
    from decoding.errors import run_cli  # the package imports torch

    run_cli(_main, args, prog="memexp")


if __name__ == "__main__":
    main()
