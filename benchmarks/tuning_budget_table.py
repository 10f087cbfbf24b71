"""Equal tuning budget: every configuration each method tried, and the one a rule fixed in advance picks.

::

    python benchmarks/tuning_budget_table.py --out runs/budget \\
        --run "lora:lr 3e-3=runs/table" --run "lora:lr 1e-3=runs/lora_lr1e-3" ... \\
        --not-reached "mome:stop_nll ln 2"

Each ``--run METHOD:LABEL=FOLDER`` is one configuration that :mod:`benchmarks.real_backbone_table` trained and
measured (``FOLDER/METHOD.json``). ``--not-reached METHOD:LABEL`` counts a configuration that hit the stop
rule's cap without 0% hallucination and was never measured: it could not have been chosen, but it was tried.

The rule (the same for every method): among a method's configurations that reached 0% hallucination, the
one whose worst interference deviation is smallest, i.e. the smallest
``max(|ratio - 1| for real-text NLL, MC1, MC2; 1 - identical greedy answers)``. Ties, which are the rule
for fine-tuning that changes every greedy answer (deviation 1.0), go to the smaller worst deviation of the
three ratios alone, then to the faster configuration.
MoME is judged on its gate-off row (Lamini's model; the gate-on row of the same run is shown beside it).
When no configuration reached 0%, the one with the lowest hallucination. Times to 0% are related to the
chosen LoRA's. Writes ``budget.json`` and ``budget.md`` to ``--out`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_backbone_table import (  # noqa: E402
    LABELS,
    METHODS,
    RATIOS,
    ROWS,
    _zero,
    fmt_ratio,
    lamini,
    md_lines,
    write_table,
)
from decoding.errors import UserError, run_cli  # noqa: E402

JUDGED_ROW = {"mome": "mome_gate_off", "lora": "lora", "full": "full"}


def worst_deviation(compare: dict, answers: bool = True) -> float:
    """The largest distance from "unchanged" over the interference metrics of one row.

    Args:
        compare: the row's :func:`memexp.interference.compare` result.
        answers: count the changed greedy answers (``1 - identical fraction``) too, not only the ratios.
    """
    ratios = [abs(compare[k]["ratio"] - 1.0) for k in RATIOS]
    return max(ratios + [1.0 - compare["identical_answers"]["fraction"]] if answers else ratios)


def method_label(spec: str) -> tuple[str, str]:
    """``METHOD:LABEL`` split and checked."""
    method, sep, label = spec.partition(":")
    if not sep or method not in METHODS or not label:
        raise UserError(f"configuration {spec!r} is not METHOD:LABEL with METHOD one of {', '.join(METHODS)}")
    return method, label


def load_run(spec: str) -> dict:
    """One ``METHOD:LABEL=FOLDER`` configuration with its stage file's training and rows."""
    head, sep, folder = spec.rpartition("=")
    if not sep:
        raise UserError(f"--run {spec!r} has no '=FOLDER'; write METHOD:LABEL=FOLDER")
    method, label = method_label(head)
    path = Path(folder) / f"{method}.json"
    if not path.exists():
        raise UserError(
            f"--run {spec!r}: {path} does not exist; run benchmarks/real_backbone_table.py there first"
        )
    data = json.loads(path.read_text())
    return {
        "method": method,
        "label": label,
        "file": str(path),
        "training": data["training"],
        "rows": data["rows"],
    }


def judged(config: dict) -> dict:
    """The row of ``config`` the rule judges (MoME: gate off)."""
    return config["rows"][JUDGED_ROW[config["method"]]]


def choose(configs: list[dict]) -> dict | None:
    """The configuration the rule picks among one method's measured ``configs`` (None when there is none)."""
    reached = [c for c in configs if c["training"]["reached_zero"]]
    if reached:
        return min(
            reached,
            key=lambda c: (
                worst_deviation(judged(c)["compare"]),
                worst_deviation(judged(c)["compare"], answers=False),
                c["training"]["train_s_to_zero"],
            ),
        )
    return min(configs, key=lambda c: judged(c)["facts"]["hallucination"], default=None)


def build(runs: list[dict], not_reached: list[tuple[str, str]]) -> dict:
    """Per method: the configurations tried, the chosen one, and one table row per model column."""
    methods, chosen = {}, {}
    for method in METHODS:
        configs = [r for r in runs if r["method"] == method]
        unmeasured = [label for m, label in not_reached if m == method]
        chosen[method] = choose(configs)
        methods[method] = {
            "tried": len(configs) + len(unmeasured),
            "not_reached_unmeasured": unmeasured,
            "chosen": None if chosen[method] is None else chosen[method]["label"],
        }
    lora = chosen["lora"]
    lora_s = lora["training"]["train_s_to_zero"] if lora and lora["training"]["reached_zero"] else None
    columns = []
    for r in runs:
        t = r["training"]
        for name in ROWS[r["method"]]:
            row = r["rows"][name]
            ratio = t["train_s_to_zero"] / lora_s if lora_s and t["reached_zero"] else None
            columns.append(
                {
                    "model": LABELS[name],
                    "config": r["label"],
                    "chosen": r is chosen[r["method"]],
                    "hallucination": row["facts"]["hallucination"],
                    "to_zero": _zero(t),
                    "time_vs_chosen_lora": ratio,
                    "worst_deviation": worst_deviation(row["compare"]),
                    "compare": row["compare"],
                    "lamini": lamini(row, None if r["method"] == "lora" else ratio),
                    "file": r["file"],
                }
            )
    return {"methods": methods, "columns": columns}


def markdown(table: dict) -> str:
    """One column per model and configuration; a line per method with its budget and choice."""
    cols = table["columns"]
    cells = [
        ("configuration", lambda c: c["config"]),
        ("chosen by the rule", lambda c: "**yes**" if c["chosen"] else "no"),
        ("hallucination after", lambda c: f"{c['hallucination']:.0%}"),
        ("train time to 0%", lambda c: c["to_zero"]),
        (
            "time to 0% / chosen LoRA's",
            lambda c: "–" if c["time_vs_chosen_lora"] is None else f"{c['time_vs_chosen_lora']:.2f}",
        ),
        ("real-text NLL ratio [95% CI]", lambda c: fmt_ratio(c["compare"]["real_text_nll"])),
        ("MC1 ratio [95% CI]", lambda c: fmt_ratio(c["compare"]["mc1"])),
        ("MC2 ratio [95% CI]", lambda c: fmt_ratio(c["compare"]["mc2"])),
        ("greedy answers identical [95% CI]", lambda c: fmt_ratio(c["compare"]["identical_answers"])),
        ("worst deviation from 1", lambda c: f"{c['worst_deviation']:.3f}"),
        ("every ratio within 1% of 1", lambda c: "yes" if c["lamini"]["ratios_within_1pct"] else "**no**"),
    ]
    lines = [["metric", *(c["model"] for c in cols)], ["---"] * (len(cols) + 1)]
    lines += [[label, *(cell(c) for c in cols)] for label, cell in cells]
    md = md_lines(lines)
    for method, m in table["methods"].items():
        extra = (
            f"; not measured (cap reached above 0%): {', '.join(m['not_reached_unmeasured'])}"
            if m["not_reached_unmeasured"]
            else ""
        )
        md += f"\n- {method}: {m['tried']} configurations tried, chosen: {m['chosen'] or '–'}{extra}"
    return md + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Load the configurations, apply the rule, write and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", action="append", default=[], metavar="METHOD:LABEL=FOLDER")
    p.add_argument("--not-reached", action="append", default=[], metavar="METHOD:LABEL")
    args = p.parse_args(argv)
    if not args.run:
        raise UserError("no --run given; pass one METHOD:LABEL=FOLDER per configuration")
    table = build([load_run(s) for s in args.run], [method_label(s) for s in args.not_reached])
    md = markdown(table)
    write_table(args.out, "budget", table, md)
    print(md, flush=True)
    return table


if __name__ == "__main__":
    run_cli(main, None, "tuning_budget_table")
