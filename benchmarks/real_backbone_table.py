"""Real-backbone table: MoME (gate off / on), peft LoRA and full fine-tuning memorise the same random facts.

::

    OMP_NUM_THREADS=1 python benchmarks/real_backbone_table.py --facts 50 --out runs/real_backbone_table

Every method trains once on the same backbone, facts (``--seed``), held-out facts and batch size, with the
same budget: one learning rate each and the same stop rule (the first validation, every ``--val-every``
epochs, with 0% hallucination; else ``--max-epochs`` or ``--max-minutes`` of fitting). MoME's settings
come from ``--mome-config`` (``configs/memexp/mome_smollm2.yaml``); its one training is evaluated with the
fact gate as trained (gate on) and with the gate radius set to 0 (gate off: every input gets its routed
experts). Per model: hallucination and answer NLL of the memorised facts, answer NLL of the held-out facts,
training time to 0% (validation excluded), and :func:`memexp.interference.measure` compared with the
backbone's (measured once) by :func:`memexp.interference.compare`: ratios after / before with paired
bootstrap 95% intervals.

Output folder, one JSON per stage written atomically; a rerun skips the stages whose file exists and
refuses one written with other settings (delete it to redo that stage)::

    base.json   the backbone's interference measurement
    mome.json   rows mome_gate_off, mome_gate_on      lora.json   row lora      full.json   row full
    table.json, table.md   assembled from the files present (rewritten on every run)

Interference inputs are not fact prompts; MoME routes each on its question as generation does
(:meth:`memexp.mome.MoMEModel.prompt_question`: up to the trained question end, ``"\\nA:"``, when the
input holds one, else the whole input) and keeps that routing for the steps after a KV cache
(:class:`PromptRoutedLM`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.interference_smollm2 import measure_kwargs, provenance  # noqa: E402
from decoding.errors import UserError, run_cli  # noqa: E402
from decoding.run_folder import atomic_write_json, atomic_write_text, differing_settings  # noqa: E402
from memexp.model_view import PromptRoutedLM  # noqa: E402
from memexp.mome.model import MoMEModel  # noqa: E402

METHODS = ("mome", "lora", "full")
ROWS = {"mome": ("mome_gate_off", "mome_gate_on"), "lora": ("lora",), "full": ("full",)}
LABELS = {"mome_gate_off": "MoME gate off", "mome_gate_on": "MoME gate on", "lora": "LoRA", "full": "full FT"}
RATIOS = ("real_text_nll", "mc1", "mc2")
TOLERANCE = 0.01  # Lamini's claim: every interference ratio within 1% of 1.0
TIME_CLAIM = 0.5  # and MoME's train time to 0% at most half LoRA's
TRAIN_SETTINGS = ("facts", "heldout", "batch", "seed", "max_epochs", "max_minutes", "val_every", "n_boot")
TRAIN_KEYS = ("reached_zero", "train_s_to_zero", "zero_epoch", "train_s_total", "epochs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/real_backbone_table"))
    p.add_argument("--model", default="smollm2:135m-instruct")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--mome-config", type=Path, default=Path("configs/memexp/mome_smollm2.yaml"))
    p.add_argument("--facts", type=int, default=50)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--max-minutes", type=float, default=15.0, help="cap on each method's fit")
    p.add_argument("--val-every", type=int, default=2)
    p.add_argument("--lora-lr", type=float, default=3e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-len", type=int, default=128)
    p.add_argument("--max-chunks", type=int, default=None, help="real-text chunks (all when omitted)")
    p.add_argument("--mc-sample", type=int, default=100)
    p.add_argument("--questions", type=int, default=None, help="first N general questions (all: None)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8, help="rows per NLL forward / generation batch")
    p.add_argument("--n-boot", type=int, default=10_000)
    return p.parse_args(argv)


@contextlib.contextmanager
def gate_off(mome: MoMEModel) -> Iterator[None]:
    """Inside, the fact gate's radius is 0: every question gets its routed experts."""
    gate = mome.router.gate
    radius = gate.radius.clone()
    gate.radius.zero_()
    try:
        yield
    finally:
        gate.radius.copy_(radius)


def settings_of(args: argparse.Namespace, stage: str) -> dict:
    """What a stage depends on (stored as ``stage_settings``); a rerun refuses a file whose own differ."""
    shared = {"model": args.model, **measure_kwargs(args), "questions": args.questions}
    if stage == "base":
        return shared
    shared |= {"stage": stage, **{k: getattr(args, k) for k in TRAIN_SETTINGS}}
    if stage == "mome":
        import yaml

        return shared | {"mome_config": yaml.safe_load(args.mome_config.read_text())["model"]["init_args"]}
    if stage == "lora":
        return shared | {"lr": args.lora_lr, "lora_r": args.lora_r, "lora_alpha": 2.0 * args.lora_r}
    return shared | {"lr": args.full_lr}


def stored(path: Path, settings: dict) -> dict | None:
    """The finished stage in ``path``, or None when there is none.

    Raises:
        UserError: ``path`` was written with other settings (never overwritten silently).
    """
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    changed = differing_settings(data.get("stage_settings", {}), settings)
    if changed:
        raise UserError(
            f"{path} was written with other settings ({', '.join(changed[:6])}); delete it to redo this "
            "stage with the new ones, or pass another --out"
        )
    return data


def make_module(method: str, args: argparse.Namespace):
    """The Lightning module of ``method`` on ``args.model`` (MoME from ``--mome-config``)."""
    from memexp.fact_tuning import FactTuning

    torch.manual_seed(args.seed)
    if method == "mome":
        from memexp.mome import MoMEConfig, MoMETuning

        init = dict(settings_of(args, "mome")["mome_config"], backbone=args.model)
        init["mome"] = MoMEConfig(**init["mome"])
        return MoMETuning(**init)
    if method == "lora":
        r = args.lora_r
        return FactTuning(backbone=args.model, method="lora", lora_r=r, lora_alpha=2.0 * r, lr=args.lora_lr)
    return FactTuning(backbone=args.model, method="full", lr=args.full_lr)


def fact_metrics(model: torch.nn.Module, dm) -> dict[str, float]:
    """Hallucination and mean answer NLL of the memorised facts, answer NLL of the held-out ones."""
    from memexp.fact_eval import evaluate_facts

    train, *heldout = dm.val_dataloader()
    cols = evaluate_facts(model, train)
    out = {
        "hallucination": 1.0 - cols["exact"].float().mean().item(),
        "answer_nll": cols["nll"].mean().item(),
    }
    if heldout:
        out["heldout_answer_nll"] = evaluate_facts(model, heldout[0])["nll"].mean().item()
    return out


def train(module, dm, args: argparse.Namespace) -> dict:
    """Fit ``module`` under the shared stop rule; returns the clock's times and the stop reason."""
    from benchmarks.mome_memorisation import TrainClock, stop_at_zero_trainer

    clock = TrainClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = stop_at_zero_trainer(args, clock, tmp)
        t0 = time.perf_counter()
        trainer.fit(module, dm)
        wall = time.perf_counter() - t0
    return {
        "reached_zero": clock.to_zero_s is not None,
        "train_s_to_zero": clock.to_zero_s,
        "zero_epoch": clock.zero_epoch,
        "train_s_total": clock.train_s,
        "fit_wall_s": wall,
        "val_s_total": clock.val_s,
        "validations": clock.validations,
        "epochs": trainer.current_epoch,
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


def run_method(method: str, args: argparse.Namespace, base, tok) -> dict:
    """Train ``method`` once, then measure facts and interference of each of its rows."""
    from memexp.data import FactsDataModule
    from memexp.interference import compare, measure

    dm = FactsDataModule(args.model, None, args.facts, args.heldout, batch_size=args.batch, seed=args.seed)
    dm.setup("fit")
    module = make_module(method, args)
    before = fact_metrics(module.model, dm)
    print(f"[{method}] before: {before}", flush=True)
    training = train(module, dm, args)
    print(f"[{method}] training: {training}", flush=True)
    model = module.model.eval()
    rows = {}
    for row in ROWS[method]:
        gate = gate_off(model) if row == "mome_gate_off" else contextlib.nullcontext()
        view = PromptRoutedLM(model) if method == "mome" else model
        with gate, torch.no_grad():
            facts = fact_metrics(model, dm)
            print(f"[{row}] facts: {facts}", flush=True)
            m = measure(view, tok, questions=questions(args), **measure_kwargs(args))
        rows[row] = {
            "facts": facts,
            "measurement": m.to_dict(),
            "compare": compare(base, m, args.n_boot, args.seed),
        }
        print(f"[{row}] interference: {json.dumps(rows[row]['compare'])}", flush=True)
    del module, model
    gc.collect()
    return {"facts_before": before, "training": training, "rows": rows}


def questions(args: argparse.Namespace) -> list[str]:
    """The general questions of the greedy-answer metric (the first ``--questions``)."""
    from memexp.interference import load_questions

    return load_questions()[: args.questions]


def fmt_ratio(c: dict) -> str:
    """``ratio [low, high]`` of a :func:`memexp.interference.ratio_interval` (or the identical fraction)."""
    value = c.get("ratio", c.get("fraction"))
    return f"{value:.3f} [{c['low']:.3f}, {c['high']:.3f}]"


def lamini(row: dict, time_ratio: float | None) -> dict:
    """Lamini's claim for one row: exact recall, every interference ratio within 1% of 1.0, time <= 0.5x."""
    c = row["compare"]
    within = [abs(c[k]["ratio"] - 1.0) <= TOLERANCE for k in RATIOS]
    within.append(c["identical_answers"]["fraction"] >= 1.0 - TOLERANCE)
    return {
        "exact_recall": row["facts"]["hallucination"] == 0.0,
        "ratios_within_1pct": all(within),
        "intervals_within_1pct": all(
            1 - TOLERANCE <= c[k]["low"] and c[k]["high"] <= 1 + TOLERANCE for k in RATIOS
        )
        and c["identical_answers"]["low"] >= 1.0 - TOLERANCE,
        "time_ratio_ok": None if time_ratio is None else time_ratio <= TIME_CLAIM,
    }


def load_stages(out: Path) -> dict[str, dict]:
    """The stage files present in ``out``, by method."""
    return {m: json.loads((out / f"{m}.json").read_text()) for m in METHODS if (out / f"{m}.json").exists()}


def assemble(out: Path) -> dict:
    """``table.json`` and ``table.md`` from the stage files present in ``out``; returns the table."""
    table = table_of(load_stages(out))
    write_table(out, "table", table, markdown(table))
    return table


def write_table(out: Path, stem: str, table: dict, md: str) -> None:
    """``out/stem.json`` and ``out/stem.md``, each written atomically (``out`` made when missing)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", table)
    atomic_write_text(out / f"{stem}.md", md)


def md_lines(lines: list[list[str]]) -> str:
    """Markdown table rows from lists of cells (the header and ``---`` row included in ``lines``)."""
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def table_of(found: dict[str, dict]) -> dict:
    """One entry per model row of the stage files ``found`` (by method): facts, times, ratios, verdicts."""
    lora = found.get("lora", {}).get("training", {})
    table: dict = {"rows": {}}
    for method, data in found.items():
        t = data["training"]
        for name, row in data["rows"].items():
            time_ratio = None
            if t["reached_zero"] and lora.get("reached_zero"):
                time_ratio = t["train_s_to_zero"] / lora["train_s_to_zero"]
            entry = {
                **row["facts"],
                "heldout_answer_nll_before": data["facts_before"].get("heldout_answer_nll"),
                "hallucination_before": data["facts_before"]["hallucination"],
                **{k: t[k] for k in TRAIN_KEYS},
                "time_vs_lora": time_ratio,
                "compare": row["compare"],
            }
            entry["lamini"] = lamini(row, None if method == "lora" else time_ratio)  # LoRA: the reference
            table["rows"][name] = entry
    return table


def _zero(r: dict) -> str:
    if r["reached_zero"]:
        return f"{r['train_s_to_zero']:.0f} s (epoch {r['zero_epoch']})"
    return f"not reached: {r['train_s_total']:.0f} s, {r['epochs']} epochs"


def _num(v: float | None, f: str = ".3f") -> str:
    return "–" if v is None else format(v, f)


YES = {True: "yes", False: "**no**", None: "–"}
MARKDOWN_ROWS = (  # (label, cell of one model's table entry)
    (
        "hallucination, memorised (before → after)",
        lambda r: f"{r['hallucination_before']:.0%} → {r['hallucination']:.0%}",
    ),
    ("answer NLL, memorised (nats/token)", lambda r: _num(r["answer_nll"])),
    (
        "answer NLL, held-out (before → after)",
        lambda r: f"{_num(r['heldout_answer_nll_before'])} → {_num(r.get('heldout_answer_nll'))}",
    ),
    ("train time to 0% (validation excluded)", _zero),
    ("time to 0% / LoRA's", lambda r: _num(r["time_vs_lora"], ".2f")),
    ("real-text NLL ratio [95% CI]", lambda r: fmt_ratio(r["compare"]["real_text_nll"])),
    ("MC1 ratio [95% CI]", lambda r: fmt_ratio(r["compare"]["mc1"])),
    ("MC2 ratio [95% CI]", lambda r: fmt_ratio(r["compare"]["mc2"])),
    ("greedy answers identical [95% CI]", lambda r: fmt_ratio(r["compare"]["identical_answers"])),
    ("Lamini: exact recall", lambda r: YES[r["lamini"]["exact_recall"]]),
    ("Lamini: every ratio within 1% of 1", lambda r: YES[r["lamini"]["ratios_within_1pct"]]),
    ("Lamini: time to 0% <= 0.5x LoRA's", lambda r: YES[r["lamini"]["time_ratio_ok"]]),
)


def markdown(table: dict) -> str:
    """The table as markdown: one column per model, one row per metric."""
    names = [n for m in METHODS for n in ROWS[m] if n in table["rows"]]
    lines = [["metric", *(LABELS[n] for n in names)], ["---"] * (len(names) + 1)]
    lines += [[label, *(cell(table["rows"][n]) for n in names)] for label, cell in MARKDOWN_ROWS]
    return md_lines(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the missing stages, then assemble the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from decoding.models import load_causal_lm, load_tokenizer
    from memexp.interference import Measurement, measure

    args.out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.model)
    base_file = args.out / "base.json"
    data = stored(base_file, settings_of(args, "base"))
    if data is None:
        print("[base] measuring the backbone", flush=True)
        m = measure(
            load_causal_lm(args.model, dtype="float32"),
            tok,
            questions=questions(args),
            **measure_kwargs(args),
        )
        data = {**m.to_dict(), "stage_settings": settings_of(args, "base"), "provenance": provenance(args)}
        atomic_write_json(base_file, data)
    else:
        print(f"[base] {base_file} exists: reused", flush=True)
    base = Measurement.from_dict({k: v for k, v in data.items() if k in Measurement.__dataclass_fields__})
    for method in args.methods:
        path, settings = args.out / f"{method}.json", settings_of(args, method)
        if stored(path, settings) is not None:
            print(f"[{method}] {path} exists: skipped", flush=True)
            continue
        t0 = time.perf_counter()
        result = run_method(method, args, base, tok)
        result |= {"method": method, "stage_settings": settings, "stage_s": time.perf_counter() - t0}
        atomic_write_json(path, {**result, "provenance": provenance(args)})
        print(f"[{method}] written to {path} ({result['stage_s']:.0f} s)", flush=True)
    table = assemble(args.out)
    print(markdown(table), flush=True)
    return table


if __name__ == "__main__":
    run_cli(main, None, "real_backbone_table")
