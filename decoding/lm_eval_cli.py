"""``memexp-lm-eval``: lm-eval's own command line with the ``memexp-decoding`` model and the memexp tasks.

::

    memexp-lm-eval --model memexp-decoding --model_args pretrained=tiny:llama,head=sled \\
        --tasks memexp_factual_factor --limit 10
    python -m decoding.lm_eval_cli ls tasks          (the same command)

lm-eval 0.4 finds models only in its own registry, so a plain ``lm_eval`` cannot see a model defined
outside it; this command imports :mod:`decoding.lm_eval_model` (which registers ``memexp-decoding``),
adds the memexp task folder (:data:`decoding.lm_eval_tasks.TASKS_DIR`) as ``--include_path`` unless one
is given, and hands every argument to lm-eval unchanged.
"""

from __future__ import annotations

import sys

from decoding.errors import UserError, run_cli

PROG = "memexp-lm-eval"


def with_task_path(argv: list[str]) -> list[str]:
    """``argv`` plus ``--include_path TASKS_DIR`` unless it asks for help only or names its own path."""
    from decoding.lm_eval_tasks import TASKS_DIR

    if not argv or argv[0] in ("-h", "--help") or any(a.split("=")[0] == "--include_path" for a in argv):
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate

        import decoding.lm_eval_model  # noqa: F401 - registers the model
    except ImportError as err:
        raise UserError(f"{PROG} needs lm-evaluation-harness ({err}); pip install 'memexp[lmeval]'") from err
    sys.argv = [PROG, *with_task_path(argv)]
    cli_evaluate()


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line; a failure ends with one line (``--debug``: the traceback)."""
    run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    main()
