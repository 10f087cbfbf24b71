"""``decoding`` command line: build tiny offline models, generate with a head, score a benchmark.

Examples::

    decoding tiny /tmp/tiny-llama --arch llama
    decoding generate --model tiny:llama --head sled --prompt "Q: Who wrote" --max_new_tokens 16 --json
    decoding generate --model DIR --head dola --dola_layers high --repetition_penalty 1.2 --prompt "..."
    decoding generate --model ALIGNED --head dera --ref_model REF --lam 2 --prompt "..."
    decoding generate --model PEFT_DIR --head dera --ref_model adapters-off --lam 0.5 --prompt "..."
    decoding generate --model smollm2:135m-instruct --chat --prompt_file questions.txt --json
    decoding score --model DIR --head sled --task truthfulqa-mc --data TruthfulQA.csv --json
    decoding score --model DIR --head dola --task factor --data wiki_factor.csv --per_item items.csv

Head options take the references' names; unset options take the task's defaults
(:mod:`decoding.presets`).
"""

from __future__ import annotations

import json
from pathlib import Path

from decoding.cli_parser import LAYER_HEADS, head_flags
from decoding.cli_parser import build_parser as _build_parser
from decoding.errors import UserError, run_cli


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
    for flag, (owner, key) in head_flags().items():
        value = getattr(args, flag)
        if value is None or (owner, key) == ("dera", "head"):  # --dera_head: the inner head, read above
            continue
        if owner not in used:
            shown = (
                "" if value is True else f" {','.join(map(str, value)) if isinstance(value, list) else value}"
            )
            raise UserError(
                f"--{flag}{shown} applies to the {owner} head, not {args.head!r}; "
                f"drop it or use --head {owner}"
            )
        if key in opts and opts[key] != value:
            raise UserError(f"{key} is given twice ({opts[key]} in --head, {value} as --{flag}); keep one")
        opts[key] = value
    if args.final_norm and not used & set(LAYER_HEADS):
        raise UserError(
            f"--final_norm applies to heads that read early layers ({', '.join(LAYER_HEADS)}), not "
            f"{args.head!r}; drop it"
        )
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
    folder, or a folder a registered loader reads such as a MoME folder; ``ref`` is then
    ``model.disable_adapter``: adapter or experts off). ``head_spec`` names the head in messages.

    Raises:
        UserError: a model that cannot be loaded, a tokenizer or head that does not fit it, a DeRa head
            without a reference, a reference with another tokenizer or a smaller vocabulary.
    """
    from decoding.head_spec import check_head_fits
    from decoding.layers import model_info
    from decoding.models import check_tokenizer_fits, load_tokenizer, loader_for

    if head.uses_ref and not ref_model:
        raise UserError(f"--head {head_spec} needs --ref_model PATH (or adapters-off)")
    adapted = (Path(model_name) / "adapter_config.json").exists() or loader_for(model_name) is not None
    if ref_model == "adapters-off" and not adapted:
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
        ref = getattr(model, "disable_adapter", None)
        if ref is None:
            raise UserError(
                f"--ref_model adapters-off: {model_name!r} has no adaptation to switch off; pass a reference "
                "model path instead"
            )
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
    from decoding.cli_io import chat_prompts, read_prompt_file

    prompts = read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    if any(not p.strip() for p in prompts):
        raise UserError("--prompt '' is empty; give the text to continue")
    if args.penalty_before_mix and args.head.split(":")[0] != "dera":
        raise UserError(f"--penalty_before_mix applies to the dera head, not {args.head!r}; drop it")
    if args.penalty_before_mix and args.repetition_penalty == 1.0:
        raise UserError(
            "--penalty_before_mix orders DeRa's mix and the repetition penalty; it needs "
            "--repetition_penalty other than 1.0 (or drop it)"
        )
    args.head_obj = _head(args, args.task)
    model, tok, ref, ref_tok = _load(args)
    if args.chat:
        prompts = chat_prompts(tok, prompts, args.model)
    import torch

    from decoding.generate import generate

    generator = None  # unseeded: torch's global generator, also one stream over the batches
    if args.seed is not None:
        generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)
    token_ids, texts = [], []
    for start in range(0, len(prompts), args.batch_size):
        out = generate(
            model,
            tok,
            prompts[start : start + args.batch_size],
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
            generator=generator,
            final_norm=args.final_norm,
            penalty_before_mix=args.penalty_before_mix,
            add_special_tokens=not args.chat,  # the chat template holds the special tokens
        )
        token_ids += out.token_ids
        texts += out.texts
    rows = [{"token_ids": ids, "text": text} for ids, text in zip(token_ids, texts)]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        print("\n".join(r["text"] for r in rows))


def _score(args) -> None:
    from decoding.cli_io import check_new_file, csv_text
    from decoding.mc_datasets import load_factor, load_truthfulqa
    from decoding.presets import task_defaults

    if args.overwrite and not args.per_item:
        raise UserError("--overwrite replaces an existing --per_item file; pass --per_item FILE or drop it")
    if args.per_item:
        check_new_file(args.per_item, "--per_item", args.overwrite)
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

    per_item: list[dict] | None = [] if args.per_item else None
    kw = dict(post_softmax=post, ref_model=ref, separate_tokenization=args.separate_tokenization)
    evaluate = evaluate_truthfulqa if args.task == "truthfulqa-mc" else evaluate_factor
    metrics = evaluate(model, tok, items, args.head_obj, per_item=per_item, final_norm=args.final_norm, **kw)
    metrics = {"task": args.task, "head": repr(args.head_obj), **metrics}
    if per_item:
        from decoding.run_folder import atomic_write_text

        atomic_write_text(args.per_item, csv_text(per_item))
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


def build_parser():
    """The ``decoding`` parser (see :mod:`decoding.cli_parser`)."""
    return _build_parser(__doc__)


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    {"tiny": _tiny, "generate": _generate, "score": _score}[args.command](args)


def main(argv: list[str] | None = None) -> None:
    """``decoding tiny|generate|score ...``; bad input ends with one line (``--debug``: traceback)."""
    run_cli(_main, argv, prog="decoding")


if __name__ == "__main__":
    main()
