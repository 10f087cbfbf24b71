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
import sys

from decoding.head import HEAD_NAMES

GEN_TASKS = ("generation", "gsm8k", "strategyqa")
SCORE_TASKS = ("truthfulqa-mc", "factor")


def _layers(text: str) -> str | list[int]:
    if text in ("low", "high"):
        return text
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'low', 'high' or comma-separated ids like 0,2,4"
        ) from err


def _add_model_and_head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, hub id or tiny:llama / tiny:gpt2")
    p.add_argument("--head", default="greedy", help=f"one of {', '.join(HEAD_NAMES)} (default: greedy)")
    p.add_argument("--dtype", default=None, help="e.g. float16, bfloat16 (checkpoint dtype when unset)")
    p.add_argument("--device", default=None, help="e.g. cuda (CPU when unset)")
    p.add_argument("--json", action="store_true", help="print JSON")
    g = p.add_argument_group("SLED")
    g.add_argument("--evolution_rate", type=float, default=None, help="alpha (default 2)")
    g.add_argument("--evolution_scale", type=int, default=None, help="k, top tokens evolved (task default)")
    g.add_argument("--evolution_lower_bound", type=float, default=None, help="score outside the top-k")
    g.add_argument("--op_T", type=int, default=None, help="evolution iterations (task default)")
    g = p.add_argument_group("DoLa")
    g.add_argument("--dola_layers", type=_layers, default=None, help="'low', 'high' or ids 0,2,4")
    g.add_argument("--relative_top", type=float, default=None, help="relative-top filter (0 = off)")
    g = p.add_argument_group("DeRa")
    g.add_argument("--ref_model", default=None, help="reference model path, or 'adapters-off' (peft model)")
    g.add_argument("--lam", type=float, default=None, help="lambda >= 0 (1 = aligned, 0 = reference)")
    g.add_argument(
        "--dera_head", default="greedy", choices=["greedy", "sled", "dola"], help="head on the mix"
    )


def _head(args, task: str):
    from decoding.presets import head_for_task

    if args.head not in HEAD_NAMES:
        raise SystemExit(f"decoding: unknown head {args.head!r}; known heads: {', '.join(HEAD_NAMES)}")
    opts = {"lam": args.lam} if args.head == "dera" else {}
    inner = args.dera_head if args.head == "dera" else args.head
    if inner == "sled":
        opts.update(
            evolution_rate=args.evolution_rate,
            evolution_scale=args.evolution_scale,
            evolution_lower_bound=args.evolution_lower_bound,
            op_T=args.op_T,
        )
    elif inner == "dola":
        opts.update(dola_layers=args.dola_layers, relative_top=args.relative_top)
    return head_for_task(args.head, task, inner=inner, **opts)


def _load(args):
    from decoding.models import check_tokenizer_fits, load_causal_lm, load_tokenizer

    model = load_causal_lm(args.model, dtype=args.dtype, device=args.device).eval()
    tok = load_tokenizer(args.model)
    check_tokenizer_fits(tok, model)
    ref, ref_tok = None, None
    if args.ref_model == "adapters-off":
        if not hasattr(model, "disable_adapter"):
            raise SystemExit("decoding: --ref_model adapters-off needs a peft adapter folder as --model")
        ref = model.disable_adapter
    elif args.ref_model:
        ref = load_causal_lm(args.ref_model, dtype=args.dtype, device=args.device).eval()
        ref_tok = load_tokenizer(args.ref_model)
    if args.head == "dera" and ref is None:
        raise SystemExit("decoding: --head dera needs --ref_model PATH (or adapters-off)")
    return model, tok, ref, ref_tok


def _generate(args) -> None:
    from decoding.generate import generate

    head = _head(args, args.task)
    model, tok, ref, ref_tok = _load(args)
    out = generate(
        model,
        tok,
        args.prompt,
        head=head,
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
    from decoding.mc import evaluate_factor, evaluate_truthfulqa
    from decoding.presets import task_defaults

    head = _head(args, args.task)
    post = task_defaults(args.task).get("post_softmax", False)
    if args.post_softmax is not None:
        post = args.post_softmax == "true"
    model, tok, ref, _ = _load(args)
    kw = dict(post_softmax=post, ref_model=ref, separate_tokenization=args.separate_tokenization)
    if args.task == "truthfulqa-mc":
        items = load_truthfulqa(args.data)[: args.limit]
        metrics = evaluate_truthfulqa(model, tok, items, head, **kw)
    else:
        items = load_factor(args.data, args.prefix_column)[: args.limit]
        metrics = evaluate_factor(model, tok, items, head, **kw)
    metrics = {"task": args.task, "head": repr(head), **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        print("\n".join(f"{k}: {v}" for k, v in metrics.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="decoding", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="build a seeded tiny HF causal LM + tokenizer into a folder (offline)")
    tiny.add_argument("out", help="target folder (must not exist or be empty)")
    tiny.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", help="generate with a decoding head")
    _add_model_and_head(gen)
    gen.add_argument("--prompt", required=True, action="append", help="prompt text (repeat for a batch)")
    gen.add_argument("--max_new_tokens", type=int, default=32)
    gen.add_argument("--task", choices=GEN_TASKS, default="generation", help="head defaults of this task")
    gen.add_argument("--repetition_penalty", type=float, default=1.0, help="CTRL penalty after the head")
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--do_sample", action="store_true", help="sample instead of argmax")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top_k", type=int, default=0)
    gen.add_argument("--top_p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)

    score = sub.add_parser("score", help="multiple-choice scoring: TruthfulQA MC1/2/3 or FACTOR")
    _add_model_and_head(score)
    score.add_argument("--task", choices=SCORE_TASKS, required=True)
    score.add_argument("--data", required=True, help="TruthfulQA csv/json/jsonl/parquet or FACTOR csv")
    score.add_argument("--limit", type=int, default=None, help="score only the first N items")
    score.add_argument(
        "--post_softmax", choices=["true", "false"], default=None, help="task default if unset"
    )
    score.add_argument(
        "--separate_tokenization", action="store_true", help="tokenise prefix and answer apart"
    )
    score.add_argument("--prefix_column", default=None, help="FACTOR prefix column (reference rule if unset)")

    args = parser.parse_args(argv)
    try:
        if args.command == "tiny":
            from decoding.tiny import build_tiny_lm

            path = build_tiny_lm(
                args.out, arch=args.arch, hidden=args.hidden, layers=args.layers, seed=args.seed
            )
            print(path)
        elif args.command == "generate":
            _generate(args)
        else:
            _score(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"decoding: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
