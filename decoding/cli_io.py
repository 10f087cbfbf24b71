"""Files of the ``decoding`` command line: prompt files, chat prompts, per-question score files.

Every check raises :class:`~decoding.errors.UserError` (one line naming the value and the fix) before
a model is loaded or a file is written. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from decoding.errors import UserError


def read_prompt_file(path: str) -> list[str]:
    """The prompts of a UTF-8 text file, one per line (trailing blank lines ignored, others refused)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--prompt_file {path!r} is not a file; pass a text file with one prompt per line")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"--prompt_file {path!r} is not UTF-8 (byte {err.start}); save it as UTF-8") from err
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"--prompt_file {path!r} holds no prompts; write one prompt per line")
    blank = next((i for i, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:
        raise UserError(
            f"--prompt_file {path!r} line {blank} is empty; write one prompt per line, without blank lines"
        )
    return lines


def chat_prompts(tokenizer, prompts: Sequence[str], model: str) -> list[str]:
    """Each prompt as one user turn rendered by the tokenizer's chat template (generation prompt added)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"--chat: the tokenizer of {model!r} has no chat template; drop --chat, or use a chat model "
            "(e.g. smollm2:135m-instruct)"
        )
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def check_new_file(path: str, flag: str, overwrite: bool) -> Path:
    """Refuse ``path`` when it is a folder, its folder is missing, or it exists and ``overwrite`` is off."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{flag} {path!r} is a folder; pass a file name such as scores.csv")
    if not file.parent.is_dir():
        raise UserError(f"{flag} {path!r}: the folder {str(file.parent)!r} does not exist; create it first")
    if file.exists() and not overwrite:
        raise UserError(f"{flag} {path!r} exists; pass --overwrite to replace it, or choose a new file name")
    return file


def csv_text(rows: Sequence[dict]) -> str:
    """``rows`` (dicts with the same keys) as CSV text with a header line."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
