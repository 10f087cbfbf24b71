"""A shipped real-text corpus: English prose that fact memorisation never trains on.

``memexp/data/real_text.txt`` holds one paragraph per line, taken from the Python 3.11.7
documentation as CPython ships it in ``Lib/pydoc_data/topics.py`` (the language reference's topics),
under the Python Software Foundation License Version 2 (``memexp/data/real_text_LICENSE.txt``).
Only prose is kept: paragraphs that start at column 0 (code, grammar rules and indented examples
are indented in that text), are not headings or bullets, hold no grammar (``::=``) or prompts
(``>>>``), are at least ``MIN_CHARS`` long and end with a full stop. Rebuild it with::

    python -m memexp.real_text            # writes memexp/data/real_text.txt from this Python

:func:`real_text_chunks` cuts the tokenised corpus into equal chunks, the unit of the real-text NLL
(``memexp/interference.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

from decoding.errors import UserError
from decoding.run_folder import atomic_write_text

DATA = Path(__file__).resolve().parent / "data"
REAL_TEXT = DATA / "real_text.txt"
RETAIN_TEXT = DATA / "retain_text.txt"  # training prose for the retain loss, disjoint from REAL_TEXT
MIN_CHARS = 200
_HEADING = re.compile(r"^[*=\-~^\"'`#+]{3,}$")


def _prose(text: str) -> list[str]:
    """The prose paragraphs of one rendered text: blocks starting at column 0, no headings, bullets,
    grammar or prompts, at least ``MIN_CHARS`` long, ending with a full stop."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(not ln or ln[0].isspace() or _HEADING.match(ln.strip()) for ln in lines):
            continue  # indented (code, grammar, quotes) or a heading underline
        joined = " ".join(ln.strip() for ln in lines)
        if joined.startswith(("* ", "- ", "Note:", "See also:")) or "::=" in joined or ">>>" in joined:
            continue
        if len(joined) >= MIN_CHARS and joined.endswith("."):
            out.append(joined)
    return out


def _unique(paragraphs: list[str], exclude: set[str] = frozenset()) -> list[str]:
    seen = set(exclude)
    return [p for p in paragraphs if not (p in seen or seen.add(p))]


def extract_prose(topics: dict[str, str]) -> list[str]:
    """Prose paragraphs of ``topics`` (name -> reST-rendered text), in sorted-name order, deduplicated.

    Args:
        topics: ``pydoc_data.topics.topics``.
    """
    return _unique([p for name in sorted(topics) for p in _prose(topics[name])])


def docstrings(module) -> list[str]:
    """The docstrings of ``module``, its classes, functions and methods defined there, in source order."""
    import inspect

    out = [module.__doc__]
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            out.append(obj.__doc__)
        if inspect.isclass(obj):
            out += [f.__doc__ for f in vars(obj).values() if inspect.isfunction(f)]
    return [inspect.cleandoc(d) for d in out if isinstance(d, str)]


def extract_retain_prose(modules: list[str], exclude: set[str]) -> list[str]:
    """Prose paragraphs of the docstrings of the standard-library ``modules``, none of ``exclude``."""
    import importlib

    return _unique(
        [p for m in modules for d in docstrings(importlib.import_module(m)) for p in _prose(d)], exclude
    )


def load_real_text(path: str | Path = REAL_TEXT) -> list[str]:
    """The corpus's paragraphs (one per non-empty line).

    Raises:
        UserError: the file is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"real-text file {path} does not exist; rebuild it with `python -m memexp.real_text`")
    paragraphs = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not paragraphs:
        raise UserError(f"real-text file {path} is empty; rebuild it with `python -m memexp.real_text`")
    return paragraphs


def real_text_chunks(
    tokenizer, chunk_len: int = 128, max_chunks: int | None = None, path: str | Path = REAL_TEXT
) -> list[list[int]]:
    """The corpus as ``chunk_len``-token chunks (paragraphs joined by newlines; the tail is dropped).

    The text is tokenised as one stream without special tokens, so every chunk has exactly
    ``chunk_len`` ids and the NLL of chunk c is over its ``chunk_len - 1`` next-token predictions.

    Args:
        tokenizer: the model's tokenizer.
        chunk_len: tokens per chunk (>= 2).
        max_chunks: keep only the first this many chunks (all when None).
        path: the corpus file.

    Raises:
        UserError: ``chunk_len < 2`` or the corpus is shorter than one chunk.
    """
    if chunk_len < 2:
        raise UserError(f"chunk_len={chunk_len} must be >= 2 (one token of context and one to predict)")
    ids = tokenizer("\n".join(load_real_text(path)), add_special_tokens=False).input_ids
    n = len(ids) // chunk_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n < 1:
        raise UserError(f"{path} has {len(ids)} tokens, fewer than chunk_len={chunk_len}; lower chunk_len")
    return [ids[c * chunk_len : (c + 1) * chunk_len] for c in range(n)]


RETAIN_MODULES = (
    "argparse collections json logging pathlib subprocess threading asyncio email http.client unittest "
    "dataclasses functools itertools os shutil socket ssl tarfile zipfile datetime decimal fractions random "
    "statistics string textwrap urllib.request csv sqlite3 pickle copy heapq bisect enum abc contextlib "
    "inspect ast tokenize difflib calendar configparser gettext locale mailbox smtplib tempfile glob fnmatch "
    "io codecs queue sched selectors multiprocessing concurrent.futures pdb doctest timeit trace traceback "
    "warnings weakref gzip bz2 lzma hashlib hmac secrets uuid base64 struct numbers platform sysconfig site "
    "venv ipaddress html.parser http.server xmlrpc.client wave colorsys imaplib ftplib poplib optparse "
    "getopt "
    "shlex cmd pprint reprlib graphlib zoneinfo tomllib plistlib netrc filecmp fileinput linecache pkgutil "
    "modulefinder runpy dis pickletools compileall py_compile symtable tabnanny pyclbr"
).split()  # the standard-library modules whose docstrings make the retain corpus


def main() -> None:
    """Rebuild ``real_text.txt`` (``pydoc_data.topics``) and ``retain_text.txt`` (docstrings of
    :data:`RETAIN_MODULES`, without any real-text paragraph) from this interpreter."""
    import sys
    from pydoc_data.topics import topics

    version = ".".join(map(str, sys.version_info[:3]))
    paragraphs = extract_prose(topics)
    atomic_write_text(REAL_TEXT, "\n".join(paragraphs) + "\n")
    print(f"wrote {len(paragraphs)} paragraphs from Python {version}'s pydoc_data.topics to {REAL_TEXT}")
    retain = extract_retain_prose(RETAIN_MODULES, set(paragraphs))
    atomic_write_text(RETAIN_TEXT, "\n".join(retain) + "\n")
    print(
        f"wrote {len(retain)} paragraphs from Python {version}'s standard-library docstrings to {RETAIN_TEXT}"
    )


if __name__ == "__main__":
    main()
