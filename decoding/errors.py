"""One-line errors for every command line of the project (``memexp``, ``prompt-pool``, ``decoding``, studies).

Bad input ends a command with one line on stderr that names the value and the fix, and exit code 1
(2 for argument-parser errors); ``--debug`` (or ``MEMEXP_DEBUG=1``) shows the traceback instead.

    from decoding.errors import UserError, run_cli

    def main(argv: list[str] | None = None) -> None:
        run_cli(_main, argv, prog="memexp")

Raise :class:`UserError` where input is checked: its message is printed as it is. Any other exception is
printed as ``<type>: <message>`` on one line, so that even an unforeseen failure is not a wall of text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

DEBUG_FLAG = "--debug"


class UserError(ValueError):
    """Bad input; the message names the value and the fix."""


def one_line(message: str) -> str:
    """``message`` folded onto one line (whitespace runs become one space)."""
    return " ".join(str(message).split())


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` is among ``argv`` or ``MEMEXP_DEBUG=1`` is set."""
    return DEBUG_FLAG in argv or os.environ.get("MEMEXP_DEBUG", "") not in ("", "0")


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    """Print ``<prog>: error: <message>`` as one line on stderr and exit with ``code``."""
    sys.stderr.write(f"{prog}: error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def describe(err: BaseException) -> str:
    """The one-line text for ``err``: a :class:`UserError`'s message, else ``<type>: <message>``."""
    if isinstance(err, UserError):
        return one_line(str(err))
    text = one_line(str(err))
    if isinstance(err, KeyError | FileNotFoundError | FileExistsError) and err.args:
        text = one_line(str(err.args[-1] if isinstance(err, KeyError) else err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_cli(main: Callable[[list[str] | None], Any], argv: Sequence[str] | None, prog: str) -> Any:
    """Run ``main(argv)`` with ``--debug`` removed; turn any exception into :func:`fail`'s one line.

    Args:
        main: the command's real entry point, called with the argument list (None: read ``sys.argv``,
            from which ``--debug`` has been removed).
        argv: the arguments, or None for the command line.
        prog: the command's name, printed before ``error:``.
    """
    debug = debug_requested(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.argv[1:] = [a for a in sys.argv[1:] if a != DEBUG_FLAG]
        args = None
    else:
        args = [a for a in argv if a != DEBUG_FLAG]
    try:
        return main(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes one line unless --debug
        if debug:
            raise
        fail(prog, f"{describe(err)} (run again with {DEBUG_FLAG} for the traceback)")


def concise_parser_errors(parser: Any, prog: str | None = None) -> Any:
    """Make an argparse / jsonargparse ``parser`` report errors as one line (no usage dump), exit 2."""
    name = prog or getattr(parser, "prog", "error")

    def error(message: str, *_: Any, **__: Any) -> NoReturn:
        fail(name, f"{message} (see --help)", code=2)

    parser.error = error
    return parser
