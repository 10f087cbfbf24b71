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
import re
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


def user_error_in(err: BaseException) -> UserError | None:
    """The first :class:`UserError` among ``err`` and its causes (``raise ... from``), else None.

    Libraries that build objects for a CLI (jsonargparse, Lightning) re-raise a constructor's error
    wrapped in their own message; the user's error is the cause.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def describe(err: BaseException) -> str:
    """The one-line text for ``err``: a :class:`UserError`'s message (also when another exception
    wraps it), else ``<type>: <message>``."""
    err = user_error_in(err) or err
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


_UNION = "Does not validate against any of the Union subtypes"
_STRUCTURE = ("Does not validate", "Subtypes:", "Errors:", "Given value type:")


def condense_union_error(message: str) -> str:
    """jsonargparse's multi-line "Does not validate against any of the Union subtypes" report, cut to
    ``--<full.key>: <first error>``, e.g. ``--model.init_args.method: Expected a typing.Literal['full',
    'lora']. Got value: qlora``. Other messages are returned unchanged."""
    if _UNION not in message:
        return message
    keys: list[str] = []
    error, given = "", ""
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        key = re.fullmatch(r'Parser key "([^"]+)":\s*(.*)', line)
        if key:
            keys.append(key.group(1))
            line = key.group(2)
        if not line or line.startswith(_STRUCTURE):
            continue
        if line.startswith("Problem with given class_path"):
            keys.append("init_args")
            continue
        if line.startswith("Given value:"):
            given = given or line
            continue
        if not error:
            error = line
    if not error:
        return message
    if "Got value" not in error and given:
        error = f"{error.rstrip('.')}. {given}"
    name = ".".join(k for i, k in enumerate(keys) if k != "init_args" or (0 < i < len(keys) - 1))
    return f"--{name}: {error}" if name else error


def concise_parser_errors(parser: Any, prog: str | None = None) -> Any:
    """Make an argparse / jsonargparse ``parser`` report errors as one line (no usage dump), exit 2."""
    name = prog or getattr(parser, "prog", "error")

    def error(message: str, *_: Any, **__: Any) -> NoReturn:
        fail(name, f"{condense_union_error(message)} (see --help)", code=2)

    parser.error = error
    return parser
