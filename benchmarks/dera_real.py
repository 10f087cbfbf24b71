"""DeRa on a real model: a one-word-answer LoRA on SmolLM2-135M-Instruct, swept over lambda.

1. Train a small peft LoRA adapter on ``smollm2:135m-instruct`` (CPU, fp32) so that it answers
   templated questions (``experiments/one_word_qa.py``) in one word, where the instruct model answers in
   sentences. The adapter is saved atomically into ``OUT/adapter`` with its training settings; a rerun
   into the same folder reuses it only when those settings match.
2. Sweep DeRa's lambda (``decoding/dera.py``) with the adapter-off model as the reference: greedy
   answers to held-out questions (entities never seen in training). Per lambda: the fraction of
   one-word answers, the mean number of words, whether the answer holds the expected word, and the
   per-token NLL of the answers under the base model (adapter off) and under the tuned model, each
   with a bootstrap 95% interval over the questions.

Writes ``OUT/dera_table.md``, ``OUT/dera_table.json`` and ``OUT/dera_real.png``::

    nice -n 19 python benchmarks/dera_real.py --out runs/dera_real          # 3-8 min on 2 CPU threads
    python benchmarks/dera_real.py --out runs/dera_real --overwrite         # retrain and sweep again

The model's weights are SmolLM2-135M-Instruct's Q4_1 4-bit values expanded to float32
(``decoding/gguf.py``), not the original bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dera_report import write_report  # noqa: E402
from decoding.answer_metrics import contains_word, word_count  # noqa: E402
from decoding.bootstrap import paired_bootstrap  # noqa: E402
from decoding.dera import DeRa  # noqa: E402
from decoding.errors import UserError, concise_parser_errors, run_cli  # noqa: E402
from decoding.generate import generate  # noqa: E402
from decoding.greedy import Greedy  # noqa: E402
from decoding.logprob_recorder import RecordLogprobs  # noqa: E402
from decoding.run_folder import atomic_write_dir, atomic_write_json, differing_settings  # noqa: E402
from experiments.one_word_qa import Question, split_questions  # noqa: E402

MODEL = "smollm2:135m-instruct"
ADAPTER_DIR, TRAIN_FILE, TABLE_JSON = "adapter", "train_settings.json", "dera_table.json"
RECIPE_VERSION = 1  # part of the adapter's settings: bump when the training code changes what it learns
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dera_real", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output folder (refused when it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="delete OUT first: retrain and sweep again")
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--n_eval", type=int, default=48, help="held-out questions (spread over the 7 families)")
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--batch_size", type=int, default=48, help="generation batch")
    p.add_argument("--steps", type=int, default=32, help="LoRA training steps")
    p.add_argument("--train_batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), help="LoRA target modules")
    p.add_argument(
        "--top_layers", type=int, default=8, help="LoRA only in the last K blocks (backward stops there)"
    )
    p.add_argument("--seed", type=int, default=0, help="data split, LoRA init, batch order and bootstrap")
    p.add_argument("--n_boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = concise_parser_errors(p).parse_args(argv)
    if len(set(args.lams)) != len(args.lams):
        raise UserError(f"--lams {args.lams} repeats a value; give each lambda once")
    if any(lam < 0 for lam in args.lams):
        raise UserError(
            f"--lams {args.lams}: DeRa's lambda must be >= 0 (0 = base, 1 = tuned, > 1 extrapolates)"
        )
    for name in (
        "n_eval",
        "max_new_tokens",
        "batch_size",
        "steps",
        "train_batch",
        "rank",
        "top_layers",
        "n_boot",
        "threads",
    ):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)} must be >= 1")
    try:
        split_questions(args.n_eval, args.seed)
    except ValueError as err:
        raise UserError(f"--n_eval: {err}") from None
    return args


def train_settings(args: argparse.Namespace) -> dict:
    """Everything the adapter's weights depend on (compared before an adapter is reused)."""
    from decoding.gguf import SMOLLM2

    train, _ = split_questions(args.n_eval, args.seed)
    return {
        "recipe": RECIPE_VERSION,
        "model": MODEL,
        "gguf_sha256": SMOLLM2["135m-instruct"].sha256,
        "n_eval": args.n_eval,
        "n_train": len(train),
        "train_data_sha256": hashlib.sha256(json.dumps([vars(q) for q in train]).encode()).hexdigest(),
        "seed": args.seed,
        "steps": args.steps,
        "train_batch": args.train_batch,
        "lr": args.lr,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": sorted(args.targets),
        "top_layers": args.top_layers,
        "threads": args.threads,
        "torch": torch.__version__,
    }


def _read_record(out: Path) -> dict | None:
    """The training record saved with the adapter in ``out``, or None."""
    path = out / ADAPTER_DIR / TRAIN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def check_out(out: Path, settings: dict, overwrite: bool) -> bool:
    """Apply the folder rule; return whether ``out`` holds an adapter to reuse. Nothing is written here."""
    if overwrite or not out.exists() or not any(out.iterdir()):
        return False
    if (out / TABLE_JSON).exists():
        raise UserError(f"{out} already holds a finished sweep; pass --overwrite to retrain and sweep again")
    record = _read_record(out)
    if record is None:
        raise UserError(
            f"{out} exists and holds no adapter of this benchmark; choose another --out or pass --overwrite"
        )
    changed = differing_settings(record.get("settings", {}), settings)
    if changed:
        raise UserError(
            f"{out / ADAPTER_DIR} was trained with other settings ({', '.join(changed)}); "
            "pass --overwrite to retrain, or choose another --out"
        )
    return True


def chat_text(tok, question: str) -> str:
    """The chat-template prompt of one user question, ending with the assistant header."""
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def chat_ids(tok, question: str) -> list[int]:
    """:func:`chat_text`'s token ids (the template holds the special tokens), as ``generate`` reads them."""
    return tok(chat_text(tok, question), add_special_tokens=False).input_ids


def target_ids(tok, q: Question) -> list[int]:
    """The one-word answer as the fact list writes it (no full stop) and the end-of-turn token."""
    return tok(q.answer, add_special_tokens=False).input_ids + [tok.eos_token_id]


def train_adapter(model, tok, train: list[Question], args: argparse.Namespace):
    """LoRA on ``args.targets`` of the last ``args.top_layers`` blocks; cross-entropy on the answer tokens
    only (the lm_head runs only there; the frozen lower blocks build no autograd graph).

    Returns the peft model (eval mode) and the loss of each step.
    """
    from peft import LoraConfig, get_peft_model

    n = model.config.num_hidden_layers
    if args.top_layers > n:
        raise UserError(f"--top_layers {args.top_layers} exceeds the model's {n} blocks; use at most {n}")
    torch.manual_seed(args.seed)
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.0,
        target_modules=list(args.targets),
        layers_to_transform=list(range(n - args.top_layers, n)),
    )
    peft_model = get_peft_model(model, cfg)
    lm = peft_model.get_base_model()  # the causal LM with the LoRA layers injected
    rows = [(chat_ids(tok, q.text), target_ids(tok, q)) for q in train]
    opt = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0
    )
    gen = torch.Generator().manual_seed(args.seed)
    order, losses = [], []
    bar = tqdm(range(args.steps), desc="training the LoRA adapter", unit="step")
    for _ in bar:
        if len(order) < args.train_batch:
            order += torch.randperm(len(rows), generator=gen).tolist()
        batch, order = [rows[i] for i in order[: args.train_batch]], order[args.train_batch :]
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)  # (B, T) right-padded
        mask = torch.zeros_like(ids)
        at, targets = [], []  # (row, position) predicting each answer token
        for r, (p, t) in enumerate(batch):
            ids[r, : len(p) + len(t)] = torch.tensor(p + t)
            mask[r, : len(p) + len(t)] = 1
            at += [(r, len(p) - 1 + j) for j in range(len(t))]
            targets += t
        h = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
        rr, pp = torch.tensor(at).T
        loss = F.cross_entropy(lm.lm_head(h[rr, pp]), torch.tensor(targets))  # (n_answer_tokens, V) logits
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return peft_model.eval(), losses


def load_or_train(out: Path, reuse: bool, settings: dict, args: argparse.Namespace):
    """The tuned peft model (trained now, or loaded from ``OUT/adapter``) and its training record."""
    from peft import PeftModel

    from decoding.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(MODEL, dtype="float32").eval()
    tok = load_tokenizer(MODEL)
    if reuse:
        record = _read_record(out)
        print(f"reusing the adapter in {out / ADAPTER_DIR} (same training settings)", file=sys.stderr)
        return PeftModel.from_pretrained(model, out / ADAPTER_DIR).eval(), tok, record
    train, _ = split_questions(args.n_eval, args.seed)
    t0 = time.perf_counter()
    peft_model, losses = train_adapter(model, tok, train, args)
    record = {"settings": settings, "train_seconds": round(time.perf_counter() - t0, 1), "losses": losses}

    def fill(tmp: Path) -> None:
        peft_model.save_pretrained(tmp)
        atomic_write_json(tmp / TRAIN_FILE, record)

    atomic_write_dir(out / ADAPTER_DIR, fill)
    return peft_model, tok, record


def _generate(peft_model, tok, prompts: list[str], batches, head, off: bool, args, bar):
    """Greedy ids and texts of every prompt, batch by batch; ``off`` switches the adapter off."""
    ids, texts = [], []
    for rows in batches:
        kw = {"ref_model": peft_model.disable_adapter} if head.uses_ref else {}
        with peft_model.disable_adapter() if off else contextlib.nullcontext():
            out = generate(
                peft_model,
                tok,
                [prompts[i] for i in rows],
                head=head,
                max_new_tokens=args.max_new_tokens,
                add_special_tokens=False,
                **kw,
            )
        ids += out.token_ids
        texts += out.texts
        bar.update()
    return ids, texts


def sweep(peft_model, tok, held: list[Question], args: argparse.Namespace) -> dict:
    """Per lambda: greedy DeRa answers, their metrics and bootstrap intervals; plus the end-point checks.

    The NLLs are recorded while generating (:class:`RecordLogprobs`): DeRa's two passes are the tuned
    model (adapter on) and the base model (adapter off).
    """
    prompts = [chat_text(tok, q.text) for q in held]
    batches = [range(b, min(b + args.batch_size, len(held))) for b in range(0, len(held), args.batch_size)]
    bar = tqdm(total=(len(args.lams) + 2) * len(batches), desc="DeRa sweep", unit="batch")
    plain = {}
    for name, off in (("adapter off", True), ("adapter on", False)):
        bar.set_postfix(run=f"greedy, {name}")
        plain[name] = _generate(peft_model, tok, prompts, batches, Greedy(), off, args, bar)
    results = {}
    for lam in args.lams:
        bar.set_postfix(run=f"lambda={lam:g}")
        ids, texts, tuned, base = [], [], [], []
        for rows in batches:  # one recorder per generate call
            rec = RecordLogprobs(DeRa(lam))
            i, t = _generate(peft_model, tok, prompts, [rows], rec, False, args, bar)
            nll_tuned, nll_base = rec.mean_nll(i)
            ids, texts, tuned, base = ids + i, texts + t, tuned + nll_tuned.tolist(), base + nll_base.tolist()
        per_prompt = {
            "one_word": [float(word_count(t) == 1) for t in texts],
            "words": [float(word_count(t)) for t in texts],
            "expected": [float(contains_word(t, q.answer)) for t, q in zip(texts, held)],
            "nll_base": base,
            "nll_tuned": tuned,
            "hit_cap": [float(len(i) >= args.max_new_tokens and tok.eos_token_id not in i) for i in ids],
        }
        name = f"lambda={lam:g}"
        results[name] = {"lam": lam, "per_prompt": per_prompt, "texts": texts, "token_ids": ids}
        for ref_lam, plain_name in ((0.0, "adapter off"), (1.0, "adapter on")):
            if lam == ref_lam:
                same = sum(a == b for a, b in zip(ids, plain[plain_name][0]))
                results[name]["same_tokens_as"] = {"run": plain_name, "prompts": same, "of": len(held)}
    for metric in results[name]["per_prompt"]:  # one set of resamples for every lambda (paired)
        stats = paired_bootstrap(
            {k: r["per_prompt"][metric] for k, r in results.items()}, None, args.n_boot, args.seed
        )
        for k, r in results.items():
            r.setdefault("summary", {})[metric] = (stats[k]["mean"], stats[k]["low"], stats[k]["high"])
    bar.close()
    return {"runs": results, "plain": {k: {"texts": v[1], "token_ids": v[0]} for k, v in plain.items()}}


def provenance() -> dict:
    """Package versions, CPU path, the GGUF file's and the converted checkpoint's sha256, git commit."""
    from decoding.gguf import SMOLLM2
    from decoding.models import resolve_model_path
    from decoding.provenance import environment, file_sha256

    folder = Path(resolve_model_path(MODEL))
    root = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True)
    return {
        "git_commit": git.stdout.strip() or None,
        "git_dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
        "environment": environment(),
        "model": MODEL,
        "gguf_sha256": SMOLLM2["135m-instruct"].sha256,
        "converted_model_safetensors_sha256": file_sha256(folder / "model.safetensors"),
        "weights": "Q4_1 4-bit values (per 32-weight block: fp16 scale and offset) expanded to float32",
    }


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    settings = train_settings(args)
    reuse = check_out(out, settings, args.overwrite)
    torch.set_num_threads(args.threads)
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    peft_model, tok, record = load_or_train(out, reuse, settings, args)
    _, held = split_questions(args.n_eval, args.seed)
    with torch.no_grad():
        results = sweep(peft_model, tok, held, args)
    from decoding.provenance import file_sha256

    meta = {
        "command": "python benchmarks/dera_real.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k != "overwrite"},
        "train": {**record["settings"], "train_seconds": record["train_seconds"]},
        "final_train_loss": sum(record["losses"][-10:]) / len(record["losses"][-10:]),
        "adapter_sha256": file_sha256(out / ADAPTER_DIR / "adapter_model.safetensors"),
        "provenance": provenance(),
        "questions": [vars(q) for q in held],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    write_report(out, results, meta)
    print(f"wrote {out / 'dera_table.md'}, {out / TABLE_JSON} and {out / 'dera_real.png'}")


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv, prog="dera_real")


if __name__ == "__main__":
    main()
