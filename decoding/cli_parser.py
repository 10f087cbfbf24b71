"""The ``decoding`` command line's parser: subcommands, flags and the argparse types that check them.

Numbers are checked where they are read (finite, in range), so a bad value ends with argparse's one
line (exit 2) before anything is loaded. Nothing here imports torch.

The head flags (one argument group per head) come from the heads' constructors
(:func:`decoding.head_options.head_options`): the flag is the option's name (:data:`FLAG_NAMES` renames
the few that would be ambiguous), its type the option's type hint, its help the class docstring's
``Args:`` text; every flag defaults to None, "the task's preset, else the head's default".
:data:`NARROWER` holds the parse-time checks that are stricter than a type hint (the constructor
checks them again), so a new head option needs no edit here.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from decoding.errors import concise_parser_errors
from decoding.head_options import HEAD_CLASSES, Head, HeadOption, head_options, hint_members, is_sequence_hint
from decoding.head_spec import HEAD_NAMES

GEN_TASKS = ("generation", "gsm8k", "strategyqa")
SCORE_TASKS = ("truthfulqa-mc", "factor")
DTYPES = ("float32", "float16", "bfloat16", "float64")
LAYER_HEADS = ("sled", "dola")  # the heads that read early layers (--final_norm)


def _layers(text: str) -> str | list[int]:
    if text in ("low", "high"):
        return text
    try:
        return _layer_ids(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'low', 'high' or comma-separated ids like 0,2,4"
        ) from None


def _layer_ids(text: str) -> list[int]:
    try:
        ids = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated layer ids like 0,2,4")
    return ids


def _int_at_least(low: int | None):
    """A whole number, at least ``low`` when given (argparse type)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = "int" if low is None else f"int >= {low}"
    return parse


def _number(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """A finite float in the given range (argparse type)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            if math.isinf(high):
                raise argparse.ArgumentTypeError(f"{value:g} must be {'>' if low_open else '>='} {low:g}")
            raise argparse.ArgumentTypeError(f"{value:g} must be in {lo}{low:g}, {high:g}{hi}")
        return value

    return parse


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: use true or false")
    return text.lower() == "true"


FLAG_NAMES = {  # (head, option) -> flag, where the option's own name would not say which head it is for
    ("sled", "layers"): "sled_layers",
    ("dola", "post_softmax"): "dola_post_softmax",
    ("dera", "head"): "dera_head",
}
NARROWER: dict[tuple[str, str], Callable[[str], Any]] = {  # checks stricter than the type hint
    ("sled", "evolution_scale"): _int_at_least(1),
    ("sled", "op_T"): _int_at_least(1),
    ("dola", "dola_layers"): _layers,
    ("dola", "relative_top"): _number(0, 1, high_open=True),
    ("dera", "lam"): _number(0),
}


def head_flags() -> dict[str, tuple[str, str]]:
    """``{flag: (head, constructor option)}`` for every option of every head (greedy has none)."""
    return {
        FLAG_NAMES.get((head, o.name), o.name): (head, o.name)
        for head in HEAD_NAMES
        for o in head_options(head)
    }


def _plain(text: str) -> str:
    """Docstring markup off: ``code`` -> code, :meth:`x` -> x."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "")


def _flag_kwargs(head: str, option: HeadOption) -> dict[str, Any]:
    """argparse keywords of one head option: type (or action/choices) from the hint, help, default None."""
    shown = "" if option.default is None else f", else {option.default}"
    kw: dict[str, Any] = {"default": None, "help": f"{_plain(option.help)} (unset: the task's preset{shown})"}
    members = [t for t in hint_members(option.hint) if t is not type(None)]
    if (head, option.name) in NARROWER:
        kw["type"] = NARROWER[head, option.name]
    elif members == [bool] and type(None) not in hint_members(option.hint):
        kw["action"] = "store_true"
    elif members == [bool]:
        kw.update(type=_boolean, metavar="{true,false}")
    elif members == [int]:
        kw["type"] = _int_at_least(None)
    elif members == [float]:
        kw["type"] = _number()
    elif len(members) == 1 and is_sequence_hint(members[0]):
        kw["type"] = _layer_ids
    elif members == [Head]:
        kw["choices"] = [n for n in HEAD_NAMES if n != "dera"]
    elif members != [str]:
        raise TypeError(
            f"no command-line type for {head} option {option.name}: {option.hint}; add it to NARROWER"
        )
    return kw


def _add_head_flags(p: argparse.ArgumentParser) -> None:
    """One argument group per head with options, its flags generated from the constructor."""
    for head in HEAD_NAMES:
        options = head_options(head)
        if not options:
            continue
        g = p.add_argument_group(HEAD_CLASSES[head][1])
        for option in options:
            g.add_argument(
                f"--{FLAG_NAMES.get((head, option.name), option.name)}", **_flag_kwargs(head, option)
            )
        if head == "dera":
            g.add_argument(
                "--ref_model", default=None, help="reference model path, or 'adapters-off' (peft model)"
            )


def _add_model_and_head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, hub id or tiny:llama / tiny:gpt2")
    p.add_argument(
        "--head",
        default="greedy",
        help=f"one of {', '.join(HEAD_NAMES)}, with options as NAME:key=value,... "
        "e.g. 'dola:dola_layers=0,2' "
        "or 'dera:lam=2,head=sled' (default: greedy)",
    )
    p.add_argument("--dtype", default=None, choices=DTYPES, help="checkpoint dtype when unset")
    p.add_argument("--device", default=None, help="e.g. cuda (CPU when unset)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_head_flags(p)
    p.add_argument(
        "--final_norm",
        action="store_true",
        help="apply the final norm to early layers (sled, dola; off as in the references)",
    )


def build_parser(description: str = "") -> argparse.ArgumentParser:
    """The ``decoding`` parser; every sub-parser reports errors as one line (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="decoding", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="build a seeded tiny HF causal LM + tokenizer into a folder (offline)")
    tiny.add_argument("out", help="target folder (must not exist or be empty)")
    tiny.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    tiny.add_argument("--hidden", type=_int_at_least(4), default=64)
    tiny.add_argument("--layers", type=_int_at_least(1), default=2)
    tiny.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", help="generate with a decoding head")
    _add_model_and_head(gen)
    given = gen.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    given.add_argument("--prompt_file", default=None, help="UTF-8 text file, one prompt per line")
    gen.add_argument("--batch_size", type=_int_at_least(1), default=16, help="prompts per batch (default 16)")
    gen.add_argument(
        "--chat", action="store_true", help="wrap each prompt as a user turn in the tokenizer's chat template"
    )
    gen.add_argument("--max_new_tokens", type=_int_at_least(1), default=32)
    gen.add_argument("--task", choices=GEN_TASKS, default="generation", help="head defaults of this task")
    gen.add_argument(
        "--repetition_penalty",
        type=_number(0, low_open=True),
        default=1.0,
        help="CTRL penalty after the head",
    )
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--do_sample", action="store_true", help="sample instead of argmax")
    gen.add_argument("--temperature", type=_number(0, low_open=True), default=1.0)
    gen.add_argument("--top_k", type=_int_at_least(0), default=0, help="0 = off")
    gen.add_argument("--top_p", type=_number(0, 1, low_open=True), default=1.0, help="in (0, 1]; 1 = off")
    gen.add_argument(
        "--seed", type=int, default=None, help="seed of the sampler (one stream for all batches)"
    )
    gen.add_argument(
        "--penalty_before_mix",
        action="store_true",
        help="DeRa: apply the repetition penalty to the aligned logits, then mix (HF-processor order)",
    )

    score = sub.add_parser("score", help="multiple-choice scoring: TruthfulQA MC1/2/3 or FACTOR")
    _add_model_and_head(score)
    score.add_argument("--task", choices=SCORE_TASKS, required=True)
    score.add_argument("--data", required=True, help="TruthfulQA csv/json/jsonl/parquet or FACTOR csv")
    score.add_argument("--limit", type=_int_at_least(1), default=None, help="score only the first N items")
    score.add_argument(
        "--post_softmax", choices=["true", "false"], default=None, help="task default if unset"
    )
    score.add_argument(
        "--separate_tokenization", action="store_true", help="tokenise prefix and answer apart"
    )
    score.add_argument("--prefix_column", default=None, help="FACTOR prefix column (reference rule if unset)")
    score.add_argument("--per_item", default=None, metavar="FILE", help="write each question's scores (CSV)")
    score.add_argument("--overwrite", action="store_true", help="replace an existing --per_item file")
    for p in (parser, tiny, gen, score):
        concise_parser_errors(p, prog="decoding")
    return parser
