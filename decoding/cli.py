"""``decoding`` command line: build tiny offline models, generate with a head, score a benchmark.

Examples::

    decoding tiny /tmp/tiny-llama --arch llama
    decoding generate --model tiny:llama --head sled --prompt "Q: Who wrote" --max_new_tokens 16 --json
    decoding generate --model DIR --head dola --dola_layers high --repetition_penalty 1.2 --prompt "..."
    decoding generate --model ALIGNED --head dera --ref_model REF --lam 2 --prompt "..."
    decoding generate --model PEFT_DIR --head dera --ref_model adapters-off --lam 0.5 --prompt "..."
    decoding score --model DIR --head sled --task truthfulqa-mc --data TruthfulQA.csv --json
    decoding score --model DIR --head dola --task factor --data wiki_factor.csv --limit 100

Head options take the references' names; unset options take the task's defaults
(:mod:`decoding.presets`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from decoding.errors import UserError, concise_parser_errors, run_cli
from decoding.head_spec import HEAD_NAMES

GEN_TASKS = ("generation", "gsm8k", "strategyqa")
SCORE_TASKS = ("truthfulqa-mc", "factor")
DTYPES = ("float32", "float16", "bfloat16", "float64")
HEAD_FLAGS = {  # option -> the head it belongs to
    "evolution_rate": "sled",
    "evolution_scale": "sled",
    "evolution_lower_bound": "sled",
    "op_T": "sled",
    "dola_layers": "dola",
    "relative_top": "dola",
    "lam": "dera",
}


def _layers(text: str) -> str | list[int]:
    if text in ("low", "high"):
        return text
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'low', 'high' or comma-separated ids like 0,2,4"
        ) from err


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"int >= {low}"
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
    g = p.add_argument_group("SLED")
    g.add_argument("--evolution_rate", type=_number(), default=None, help="alpha (default 2)")
    g.add_argument("--evolution_scale", type=_int_at_least(1), default=None, help="k, top tokens evolved")
    g.add_argument("--evolution_lower_bound", type=_number(), default=None, help="score outside the top-k")
    g.add_argument("--op_T", type=_int_at_least(1), default=None, help="evolution iterations (task default)")
    g = p.add_argument_group("DoLa")
    g.add_argument("--dola_layers", type=_layers, default=None, help="'low', 'high' or ids 0,2,4")
    g.add_argument(
        "--relative_top",
        type=_number(0, 1, high_open=True),
        default=None,
        help="relative-top filter (0 = off)",
    )
    g = p.add_argument_group("DeRa")
    g.add_argument("--ref_model", default=None, help="reference model path, or 'adapters-off' (peft model)")
    g.add_argument("--lam", type=_number(0), default=None, help="lambda >= 0 (1 = aligned, 0 = reference)")
    g.add_argument(
        "--dera_head",
        default=None,
        choices=["greedy", "sled", "dola"],
        help="head on the mix (default greedy)",
    )


def _head(args, task: str):
    """The head of ``--head`` (an option string) and the head flags, on ``task``'s defaults."""
    from decoding.head_spec import check_head_fits, model_layout, parse_head_options
    from decoding.presets import head_for_task

    name, opts = parse_head_options(args.head)
    inner = opts.pop("head", None) if name == "dera" else name
    if name == "dera" and args.dera_head is not None:
        if inner not in (None, args.dera_head):
            raise UserError(
                f"--head {args.head!r} and --dera_head {args.dera_head} disagree; give the inner head once"
            )
        inner = args.dera_head
    inner = inner or "greedy"
    used = {"dera", inner} if name == "dera" else {name}
    for flag, owner in HEAD_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if owner not in used:
            raise UserError(
                f"--{flag} {value} applies to the {owner} head, not {args.head!r}; "
                f"drop it or use --head {owner}"
            )
        if flag in opts and opts[flag] != value:
            raise UserError(f"{flag} is given twice ({opts[flag]} in --head, {value} as --{flag}); keep one")
        opts[flag] = value
    if name != "dera" and args.dera_head is not None:
        raise UserError(
            f"--dera_head {args.dera_head} applies to the dera head only; drop it or use --head dera"
        )
    head = head_for_task(name, task, inner=inner, **opts)
    check_head_fits(head, model_layout(args.model), args.head, args.model)
    return head


def _load_model(name: str, dtype: str | None, device: str | None):
    from decoding.models import load_causal_lm

    try:
        return load_causal_lm(name, dtype=dtype, device=device).eval()
    except OSError as err:  # load_causal_lm's message names the model and what to pass instead
        raise UserError(str(err)) from err
    except Exception as err:  # safetensors' own error type for a truncated or corrupt file
        if "safetensor" not in type(err).__name__.lower():
            raise
        raise UserError(
            f"could not read the weights of {name!r} ({err}); the model.safetensors file is incomplete or "
            "corrupt: re-save or re-download the model"
        ) from err


def load_models(
    model_name: str,
    head,
    head_spec: str,
    ref_model: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
):
    """``(model, tokenizer, ref, ref_tokenizer)`` for ``head``, checked as the command line checks them.

    ``ref_model`` is DeRa's reference: a model name, or ``adapters-off`` (``model`` is a peft adapter
    folder; ``ref`` is then ``model.disable_adapter``). ``head_spec`` names the head in messages.

    Raises:
        UserError: a model that cannot be loaded, a tokenizer or head that does not fit it, a DeRa head
            without a reference, a reference with another tokenizer or a smaller vocabulary.
    """
    from decoding.head_spec import check_head_fits
    from decoding.layers import model_info
    from decoding.models import check_tokenizer_fits, load_tokenizer

    if head.uses_ref and not ref_model:
        raise UserError(f"--head {head_spec} needs --ref_model PATH (or adapters-off)")
    if ref_model == "adapters-off" and not (Path(model_name) / "adapter_config.json").exists():
        raise UserError(
            f"--ref_model adapters-off needs a peft adapter folder as --model (no adapter_config.json in "
            f"{model_name!r}); pass a reference model path instead"
        )
    model = _load_model(model_name, dtype, device)
    tok = load_tokenizer(model_name)
    check_tokenizer_fits(tok, model)
    check_head_fits(head, _layout_of(model_info(model), model), head_spec, model_name)
    ref, ref_tok = None, None
    if ref_model == "adapters-off":
        ref = model.disable_adapter
    elif ref_model:
        ref = _load_model(ref_model, dtype, device)
        ref_tok = load_tokenizer(ref_model)
        if ref_tok.get_vocab() != tok.get_vocab():
            raise UserError(
                f"--ref_model {ref_model!r} has another tokenizer than "
                f"--model {model_name!r}; DeRa needs "
                "a reference that shares the model's tokenizer (e.g. the base it was fine-tuned from)"
            )
        rows = ref.get_output_embeddings().weight.shape[0]
        if rows < len(tok):
            raise UserError(
                f"--ref_model {ref_model!r} has {rows} output rows for {len(tok)} token ids; use a "
                "reference trained with the same tokenizer"
            )
    return model, tok, ref, ref_tok


def _load(args):
    return load_models(args.model, args.head_obj, args.head, args.ref_model, args.dtype, args.device)


def _layout_of(info: tuple[int, bool], model):
    from decoding.head_spec import ModelLayout

    return ModelLayout(info[0], info[1], model.get_output_embeddings().weight.shape[0])


def _generate(args) -> None:
    if any(not p.strip() for p in args.prompt):
        raise UserError("--prompt '' is empty; give the text to continue")
    args.head_obj = _head(args, args.task)
    model, tok, ref, ref_tok = _load(args)
    from decoding.generate import generate

    out = generate(
        model,
        tok,
        args.prompt,
        head=args.head_obj,
        max_new_tokens=args.max_new_tokens,
        ref_model=ref,
        ref_tokenizer=ref_tok,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop or (),
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    rows = [{"token_ids": ids, "text": text} for ids, text in zip(out.token_ids, out.texts)]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        print("\n".join(r["text"] for r in rows))


def _score(args) -> None:
    from decoding.data import load_factor, load_truthfulqa
    from decoding.presets import task_defaults

    args.head_obj = _head(args, args.task)
    post = task_defaults(args.task).get("post_softmax", False)
    if args.post_softmax is not None:
        post = args.post_softmax == "true"
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data!r} is not a file; pass the task's csv/json/jsonl/parquet file")
    try:
        if args.task == "truthfulqa-mc":
            items = load_truthfulqa(args.data)
        else:
            items = load_factor(args.data, args.prefix_column)
    except (ValueError, KeyError) as err:
        raise UserError(f"--data {args.data!r} is not a {args.task} file: {err}") from err
    if not items:
        raise UserError(f"--data {args.data!r} holds no {args.task} items; pass a file with at least one")
    items = items[: args.limit]
    model, tok, ref, _ = _load(args)
    from decoding.mc import evaluate_factor, evaluate_truthfulqa

    kw = dict(post_softmax=post, ref_model=ref, separate_tokenization=args.separate_tokenization)
    evaluate = evaluate_truthfulqa if args.task == "truthfulqa-mc" else evaluate_factor
    metrics = evaluate(model, tok, items, args.head_obj, **kw)
    metrics = {"task": args.task, "head": repr(args.head_obj), **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{k}: {v}" for k, v in metrics.items()))


def _tiny(args) -> None:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; pick a new folder for the tiny model")
    if args.hidden % 4:
        raise UserError(f"--hidden {args.hidden} must be a multiple of 4 (the tiny models have 4 heads)")
    from decoding.tiny import build_tiny_lm

    print(build_tiny_lm(out, arch=args.arch, hidden=args.hidden, layers=args.layers, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    """The ``decoding`` parser; every sub-parser reports errors as one line (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="decoding", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    gen.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for a batch)")
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
    gen.add_argument("--seed", type=int, default=None)

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
    for p in (parser, tiny, gen, score):
        concise_parser_errors(p, prog="decoding")
    return parser


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    {"tiny": _tiny, "generate": _generate, "score": _score}[args.command](args)


def main(argv: list[str] | None = None) -> None:
    """``decoding tiny|generate|score ...``; bad input ends with one line (``--debug``: traceback)."""
    run_cli(_main, argv, prog="decoding")


if __name__ == "__main__":
    main()
