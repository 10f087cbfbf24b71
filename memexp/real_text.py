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
MIN_CHARS = 200
_HEADING = re.compile(r"^[*=\-~^\"'`#+]{3,}$")


def extract_prose(topics: dict[str, str], min_chars: int = MIN_CHARS) -> list[str]:
    """Prose paragraphs of ``topics`` (name -> reST-rendered text), in sorted-name order, deduplicated.

    Args:
        topics: ``pydoc_data.topics.topics``.
        min_chars: shortest paragraph kept, in characters.
    """
    out: list[str] = []
    seen: set[str] = set()
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.split("\n")
            if any(not ln or ln[0].isspace() or _HEADING.match(ln.strip()) for ln in lines):
                continue  # indented (code, grammar, quotes) or a heading underline
            text = " ".join(ln.strip() for ln in lines)
            if text.startswith(("* ", "- ", "Note:", "See also:")) or "::=" in text or ">>>" in text:
                continue
            if len(text) < min_chars or not text.endswith(".") or text in seen:
                continue
            seen.add(text)
            out.append(text)
    return out


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
        raise UserError(f"the real text has {len(ids)} tokens, fewer than chunk_len={chunk_len}; lower it")
    return [ids[c * chunk_len : (c + 1) * chunk_len] for c in range(n)]


def main() -> None:
    """Rebuild ``memexp/data/real_text.txt`` from this interpreter's ``pydoc_data.topics``."""
    import sys
    from pydoc_data.topics import topics

    paragraphs = extract_prose(topics)
    atomic_write_text(REAL_TEXT, "\n".join(paragraphs) + "\n")
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"wrote {len(paragraphs)} paragraphs from Python {version}'s pydoc_data.topics to {REAL_TEXT}")


if __name__ == "__main__":
    main()
