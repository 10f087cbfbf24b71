"""``prompt-pool`` command line: run a whole continual task sequence from YAML configs.

    prompt-pool fit --config configs/prompt_pool/split_digits.yaml
    prompt-pool fit --config configs/prompt_pool/split_digits.yaml --runner.resume true     # after a kill
    prompt-pool fit --config configs/prompt_pool/split_digits.yaml --runner.overwrite true  # start again
    prompt-pool fit --config configs/prompt_pool/baselines/ewc.yaml --print_config

``prompt-pool --help`` is answered here without importing torch or Lightning; everything else goes to
:mod:`prompt_pool.lightning_cli`. Bad input ends with one line on stderr (``--debug``: the traceback).
"""

from __future__ import annotations

import sys

HELP = """\
usage: prompt-pool [-h] [-c CONFIG] [--print_config[=flags]] [--debug] {fit} ...

Run a continual task sequence (L2P or a baseline) from YAML configs: one fresh Trainer per task,
the accuracy matrix A[i, t], metrics, plots; a killed run resumes at its task.

  prompt-pool fit --config configs/prompt_pool/split_digits.yaml
  prompt-pool fit --config configs/prompt_pool/split_digits.yaml \\
      --config configs/prompt_pool/baselines/ewc.yaml
  prompt-pool fit --config configs/prompt_pool/split_digits.yaml --runner.resume true
  prompt-pool fit --config configs/prompt_pool/split_cifar100.yaml --data.source.root /data/cifar100 \\
      --print_config

subcommands:
  fit                   run the sequence; `prompt-pool fit --help` lists every setting (model.*,
                        data.*, trainer.*, runner.*)

options:
  -h, --help            show this help and exit
  -c CONFIG, --config CONFIG
                        a YAML/JSON configuration file (also after `fit`; later ones override)
  --print_config[=flags]
                        print the resolved configuration and exit (flags: skip_default, skip_unset)
  --debug               show the traceback of an error (or set MEMEXP_DEBUG=1)

run folder (--runner.out_dir): holds one configuration (run_config.json). Another configuration is
refused, naming the settings that differ; a finished run is refused; an unfinished one continues only
with --runner.resume true. --runner.overwrite true deletes the run and starts again. fast_dev_run
never touches it. WANDB_MODE (disabled/offline/online) overrides the logger's offline setting; wandb
writes into the run folder.
"""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``prompt-pool`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if [a for a in args if a != "--debug"] in (["-h"], ["--help"]):
        sys.stdout.write(HELP)
        raise SystemExit(0)
    from decoding.errors import run_cli  # imports torch (decoding's package): after the fast path

    run_cli(_main, argv, prog="prompt-pool")


def _main(args: list[str] | None) -> None:
    from prompt_pool.lightning_cli import cli

    cli(args)


if __name__ == "__main__":
    main()
