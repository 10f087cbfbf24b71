"""The real-backbone table over seeds: mean and 95% interval of each metric; Lamini's claim judged on them.

::

    python benchmarks/seed_table.py --out runs/seeds runs/table_seed0 runs/table_seed1 runs/table_seed2

Each folder holds one seed's stage files of :mod:`benchmarks.real_backbone_table` (``mome.json``,
``lora.json``, ``full.json``; a folder may hold copies of stage files made elsewhere with the same
settings). Every folder must hold the same methods with the same settings except ``seed``, and every seed
once; anything else is refused. Per model and seed: the fact metrics, training time to 0%, the time
relative to the same seed's LoRA, and the interference ratios (each seed's point estimate; the interval
is over seeds, so it holds the facts drawn and the training's randomness, not only the inputs sampled).

Lamini's claim per model, from the intervals (:func:`experiments.seed_stats.verdict`): every seed at
0% hallucination; each interference ratio's interval inside [0.99, 1.01] (and identical greedy answers
above 0.99); the time ratio's interval below 0.5. Writes ``seeds.json`` and ``seeds.md`` (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_backbone_table import (  # noqa: E402
    LABELS,
    METHODS,
    ROWS,
    TIME_CLAIM,
    TOLERANCE,
    load_stages,
    md_lines,
    table_of,
    write_table,
)
from decoding.errors import UserError, run_cli  # noqa: E402
from experiments.seed_stats import NOT_SUPPORTED, SUPPORTED, aggregate, fmt_ci, verdict  # noqa: E402

METRICS = (  # (key, label, digits)
    ("hallucination", "hallucination, memorised", 3),
    ("answer_nll", "answer NLL, memorised", 3),
    ("heldout_answer_nll", "answer NLL, held-out", 3),
    ("train_s_to_zero", "train time to 0% (s)", 0),
    ("time_vs_lora", "time to 0% / same seed's LoRA", 2),
    ("real_text_nll", "real-text NLL ratio", 3),
    ("mc1", "MC1 ratio", 3),
    ("mc2", "MC2 ratio", 3),
    ("identical_answers", "greedy answers identical", 3),
)
INTERFERENCE = ("real_text_nll", "mc1", "mc2")


def seed_rows(folder: Path) -> tuple[int, dict, list[dict]]:
    """One seed's folder: its seed, its settings by method (seed left out) and one record per model."""
    found = load_stages(folder)
    if not found:
        raise UserError(
            f"{folder} holds no mome.json, lora.json or full.json; run real_backbone_table.py there"
        )
    settings = {m: {k: v for k, v in d["stage_settings"].items() if k != "seed"} for m, d in found.items()}
    seeds = {d["stage_settings"]["seed"] for d in found.values()}
    if len(seeds) != 1:
        raise UserError(f"{folder} mixes stage files of seeds {sorted(seeds)}; one folder per seed")
    seed = seeds.pop()
    records = []
    for name, e in table_of(found)["rows"].items():
        c = e["compare"]
        records.append(
            {
                "model": name,
                "seed": seed,
                **{k: e[k] for k in ("hallucination", "answer_nll", "heldout_answer_nll", "time_vs_lora")},
                "train_s_to_zero": e["train_s_to_zero"],
                **{k: c[k]["ratio"] for k in INTERFERENCE},
                "identical_answers": c["identical_answers"]["fraction"],
            }
        )
    return seed, settings, records


def build(folders: list[Path]) -> dict:
    """The aggregated rows, each model's verdicts and the seeds, from one folder per seed."""
    seeds, records, first = [], [], None
    for folder in folders:
        seed, settings, rows = seed_rows(folder)
        if seed in seeds:
            raise UserError(f"seed {seed} appears twice ({folder}); give each seed's folder once")
        if first is None:
            first = (folder, settings)
        elif settings != first[1]:
            raise UserError(
                f"{folder} was made with other methods or settings than {first[0]} (seed aside); "
                "compare only folders of one configuration"
            )
        seeds.append(seed)
        records += rows
    keys = [k for k, _, _ in METRICS]
    rows = {r["model"]: r for r in aggregate(records, ["model"], keys)}
    for name, r in rows.items():
        at_zero = sum(1 for x in records if x["model"] == name and x["hallucination"] == 0.0)
        r["seeds_at_zero"] = at_zero
        within = lambda v: abs(v - 1.0) <= TOLERANCE  # noqa: E731
        r["verdicts"] = {
            "exact_recall": SUPPORTED if at_zero == r["n_seeds"] else NOT_SUPPORTED,
            **{k: verdict(r[f"{k}_lo"], r[f"{k}_hi"], within) for k in INTERFERENCE},
            "identical_answers": verdict(
                r["identical_answers_lo"], r["identical_answers_hi"], lambda v: v >= 1.0 - TOLERANCE
            ),
            "time": None
            if name == "lora"
            else verdict(r["time_vs_lora_lo"], r["time_vs_lora_hi"], lambda v: v <= TIME_CLAIM),
        }
    order = [n for m in METHODS for n in ROWS[m] if n in rows]
    return {"seeds": sorted(seeds), "rows": {n: rows[n] for n in order}, "records": records}


def markdown(table: dict) -> str:
    """Models as columns; each metric as ``mean [95% CI]`` over seeds, then the verdicts."""
    names = list(table["rows"])
    lines = [["metric (mean [95% CI] over seeds)", *(LABELS[n] for n in names)], ["---"] * (len(names) + 1)]
    for key, label, digits in METRICS:
        cells = []
        for n in names:
            r = table["rows"][n]
            cell = fmt_ci(r[key], r[f"{key}_lo"], r[f"{key}_hi"], digits)
            cells.append(
                cell if r[f"{key}_n"] == r["n_seeds"] else f"{cell} ({r[f'{key}_n']} of {r['n_seeds']})"
            )
        lines.append([label, *cells])
    lines.append(
        [
            "seeds at 0% hallucination",
            *(f"{table['rows'][n]['seeds_at_zero']}/{table['rows'][n]['n_seeds']}" for n in names),
        ]
    )
    for key, label in (
        ("exact_recall", "Lamini: exact recall"),
        *((k, f"Lamini: {k} within 1%") for k in (*INTERFERENCE, "identical_answers")),
        ("time", "Lamini: time to 0% <= 0.5x LoRA's"),
    ):
        lines.append([label, *(table["rows"][n]["verdicts"][key] or "–" for n in names)])
    md = md_lines(lines)
    return md + f"\nSeeds: {', '.join(map(str, table['seeds']))}.\n"


def main(argv: list[str] | None = None) -> dict:
    """Aggregate the folders, write and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("folders", type=Path, nargs="+", help="one real_backbone_table.py folder per seed")
    args = p.parse_args(argv)
    table = build(args.folders)
    md = markdown(table)
    write_table(args.out, "seeds", table, md)
    print(md, flush=True)
    return table


if __name__ == "__main__":
    run_cli(main, None, "seed_table")
