"""Hallucination vs training loss: when does a memorised fact become exactly recalled, per method and head?

::

    python -m experiments.hallucination_vs_loss \
        --config configs/experiments/hallucination_vs_loss.yaml --quick

Every method memorises the same facts with random answers (p = 1 of :mod:`experiments.random_labels`;
Lamini's setting) from the same base model. At every evaluation each fact's answer NLL (summed and per
token, worst token) and exact recall are recorded for greedy decoding and for every decoding head
(DoLa, SLED, a DeRa lambda sweep whose reference is the model with its adaptation off; for full
fine-tuning the base weights). From these records:

- hallucination rate (1 - exact) against the evaluated answer NLL (per token, mean over *all* trained
  facts: the same quantity for every method, not the training batch loss), per method and head;
- the loss threshold below which facts are recalled (:mod:`experiments.threshold`), on the summed and the
  per-token axis, beside ln 2 (the sufficient bound of docs/algorithms/memorisation.md) and the
  entropy of a random answer;
- per head, the threshold on the *greedy* NLL axis: a head with a higher threshold recalls facts at a
  higher loss.

Output in ``results/hallucination_vs_loss/<run>/``: ``thresholds.csv``, ``curves.csv``, ``binned.csv``,
``hallucination_vs_loss.png``, ``report.md``, ``summary.md`` (claims and verdicts), ``results.json``;
one cell per (method, seed) in ``cells/<method>_s<seed>`` (each resumable on its own). Every table entry
is the mean over ``seeds`` with its 95% Student-t interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.errors import run_cli
from experiments.base_model import BaseConfig, pretrain_base
from experiments.cell import TrainConfig, read_rows, run_cell, write_rows
from experiments.cell_claim import run_claimed
from experiments.checks import check_base, check_number, check_output, check_seeds, check_train
from experiments.claims import write_summary
from experiments.code_facts import answer_entropy_nats, code_task, corrupt
from experiments.hallucination_report import plot_experiment, threshold_claims
from experiments.seed_stats import aggregate, ci_columns
from experiments.study_cli import config_dict, parse_study_args
from experiments.study_folder import open_run_dir
from experiments.study_report import WANDB_PROJECT, finish_study, finish_wandb, markdown_table, wandb_logger
from experiments.threshold import LN2, binned_exact, log_edges, safe_threshold, separating_threshold

NAME = "hallucination_vs_loss"
PROG = "python -m experiments.hallucination_vs_loss"


def _default_train() -> TrainConfig:
    return TrainConfig(
        heads=[
            "dola:dola_layers=low",
            "dola:dola_layers=high",
            "sled",
            "dera:lam=0.5",
            "dera:lam=2",
            "dera:lam=4",
        ]
    )


@dataclass
class HallucinationVsLossConfig:
    """Settings of the hallucination-vs-loss experiment.

    Attributes:
        output_root: results are written to ``<output_root>/hallucination_vs_loss/<run>``.
        run: name of the run folder.
        seed: seeds the facts (questions) and the base model.
        seeds: one cell per (method, seed); a cell seed sets the random answers, the initialisation and
            the data order. Tables give mean and 95% t-interval over seeds.
        ln2_band: "recall starts near ln 2" means a threshold within [ln 2 / band, ln 2 * band] nats
            (the decision boundary of the summary's verdict).
        methods: memorisation methods (``full``, ``lora``, ``mome``).
        num_facts: facts memorised (all with random answers).
        code_len: half the answer length in characters (answers: ``2 * code_len`` chars over [A-Z0-9]).
        base: the starting model.
        train: training; ``train.heads`` are the decoding heads compared with greedy.
        wandb: log every run and the summary to wandb (offline).
        quick_settings: overrides applied by ``--quick``.
    """

    output_root: str = "results"
    run: str = "default"
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ln2_band: float = 4.0
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])
    num_facts: int = 200
    code_len: int = 16
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=_default_train)
    wandb: bool = True
    quick_settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse any bad setting (UserError naming it) before any work starts."""
        check_output(self.output_root, self.run)
        check_number("seed", self.seed, 0, integer=True)
        check_seeds(self.seeds)
        check_number("ln2_band", self.ln2_band, 1.0, example=4)
        check_number("num_facts", self.num_facts, 1, integer=True, example=100)
        layout = check_base(self.base)
        code_task(self.base.pretrain_facts + self.num_facts, 0, self.seed, self.code_len)
        check_train(self.train, self.methods, layout, self.base.backbone)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def head_thresholds(method: str, facts: list[dict[str, float]], entropy: float) -> list[dict[str, Any]]:
    """Threshold rows (greedy and every head) of one method from its per-fact records.

    All thresholds are on the greedy (model) NLL axis: records whose head is right at a higher NLL
    push that head's threshold up.
    """
    heads = ["exact"] + sorted(k for k in facts[0] if k.startswith("exact/"))
    nll_sum = [r["nll_sum"] for r in facts]
    nll_tok = [r["nll"] for r in facts]
    rows = []
    for key in heads:
        hits = [bool(r[key]) for r in facts]
        tau_sum, acc = separating_threshold(nll_sum, hits)
        tau_tok, _ = separating_threshold(nll_tok, hits)
        final_epoch = max(r["epoch"] for r in facts)
        final = [bool(r[key]) for r in facts if r["epoch"] == final_epoch]
        below = [h for x, h in zip(nll_sum, hits) if x < LN2]
        recalled = any(hits)  # with no recalled record a stump threshold means nothing
        rows.append(
            {
                "method": method,
                "head": "greedy" if key == "exact" else key.split("/", 1)[1],
                "threshold_nll_sum": tau_sum if recalled else None,
                "threshold_nll_tok": tau_tok if recalled else None,
                "stump_accuracy": acc,
                "safe_nll_sum": _finite(safe_threshold(nll_sum, hits)),
                "exact_below_ln2": sum(below) / len(below) if below else None,
                "final_hallucination": 1.0 - sum(final) / len(final),
                "entropy_nats": entropy,
            }
        )
    return rows


def nll_curve(curve: list[dict[str, float]], facts: list[dict[str, float]]) -> list[dict[str, float]]:
    """The curve with ``nll``: per evaluation, the mean over *all* trained facts of the evaluated per-fact
    answer NLL (nats/token; memexp.fact_eval's ``nll``). The same quantity for every method, unlike the
    training batch loss (MoME's per-fact early stop leaves recalled facts out of its batches)."""
    by_epoch: dict[int, list[float]] = {}
    for r in facts:
        by_epoch.setdefault(int(r["epoch"]), []).append(r["nll"])
    return [{**c, "nll": sum(by_epoch[int(c["epoch"])]) / len(by_epoch[int(c["epoch"])])} for c in curve]


STAT_KEYS = [
    "threshold_nll_sum", "threshold_nll_tok", "stump_accuracy", "safe_nll_sum", "exact_below_ln2",
    "final_hallucination",
]  # fmt: skip
TABLE_COLUMNS = ["method", "head", "n_seeds", *STAT_KEYS]


def run(cfg: HallucinationVsLossConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment; write its tables, plot, report and summary; return ``results.json``.

    Cells already held by another process on this run folder are left to it (:mod:`experiments.cell_claim`).
    """
    cfg.validate()
    root = open_run_dir(Path(cfg.output_root) / NAME / cfg.run, config_dict(cfg), resume, overwrite)
    n_pre = cfg.base.pretrain_facts
    task = code_task(n_pre + cfg.num_facts, 0, cfg.seed, cfg.code_len)
    pretrain = task.train[:n_pre]
    backbone = cfg.base.backbone
    if n_pre:
        backbone = pretrain_base(root / "base", cfg.base, pretrain, cfg.seed, cfg.train.accelerator)

    entropy = answer_entropy_nats(2 * cfg.code_len)
    curves, seed_rows, binned, tokens = [], [], [], []
    cells = [(m, s) for m in cfg.methods for s in cfg.seeds]

    dirs = [root / "cells" / f"{m}_s{s}" for m, s in cells]

    def job(method: str, seed: int, cell_dir: Path) -> Callable[[], object]:
        def train() -> object:
            facts, corrupted = corrupt(task.train[n_pre:], 1.0, seed)
            logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{NAME}/{cfg.run}/{cell_dir.name}", NAME)
            summary = run_cell(cell_dir, method, backbone, facts, [], corrupted, cfg.train, seed, logger)
            finish_wandb(logger)
            return summary

        return train

    run_claimed([(d, job(*c, d)) for d, c in zip(dirs, cells)])
    for (method, seed), cell_dir in zip(cells, dirs):
        records = read_rows(cell_dir / "fact_evals.csv")
        curves += [
            {"method": method, "seed": seed, **c}
            for c in nll_curve(read_rows(cell_dir / "curve.csv"), records)
        ]
        seed_rows += [{**r, "seed": seed} for r in head_thresholds(method, records, entropy)]
        nll = [r["nll_sum"] for r in records]
        hits = [bool(r["exact"]) for r in records]
        binned += [{"method": method, "seed": seed, **b} for b in binned_exact(nll, hits, log_edges(nll))]
        tokens.append(sum(r["num_tokens"] for r in records) / len(records))

    rows = aggregate(seed_rows, ["method", "head"], STAT_KEYS)
    for row in rows:
        row["entropy_nats"] = entropy
    write_rows(root / "seed_thresholds.csv", seed_rows)
    write_rows(root / "thresholds.csv", rows)
    write_rows(root / "curves.csv", curves)
    write_rows(root / "binned.csv", binned)
    image = plot_experiment(curves, binned, rows, root)
    tokens_per_fact = sum(tokens) / len(tokens)
    claims = threshold_claims(rows, entropy, cfg.ln2_band)
    intro = [
        f"Run `{cfg.run}`: {cfg.num_facts} facts with random {2 * cfg.code_len}-char answers (entropy "
        f"H = {entropy:.1f} nats, {tokens_per_fact:.1f} scored tokens per fact), methods {cfg.methods}, "
        f"seeds {cfg.seeds} (facts and base model: seed {cfg.seed}; each cell seed sets the random answers, "
        "the initialisation and the data order).",
        "The loss is the evaluated per-fact answer NLL (the same quantity for every method); thresholds "
        "are decision stumps on the greedy model's summed answer NLL; intervals: 95% Student-t over seeds.",
    ]
    summary_path = write_summary(root, "Hallucination vs loss: summary", intro, claims)
    report = [
        f"# Hallucination vs loss `{cfg.run}`",
        "",
        f"{cfg.num_facts} facts with random answers of {2 * cfg.code_len} chars over [A-Z0-9]: entropy "
        f"H = {entropy:.1f} nats per answer, {tokens_per_fact:.1f} scored tokens per fact (answer + EOS), "
        f"so H/token = {entropy / tokens_per_fact:.2f} nats. Sufficient bound for greedy recall: summed "
        f"NLL < ln 2 = {LN2:.3f}.",
        f"Base `{backbone}`, seeds {cfg.seeds}; thresholds are decision stumps on the greedy model's NLL "
        "(see threshold.py). Every entry: mean over seeds [95% Student-t interval]; `safe_nll_sum` leaves "
        f"out seeds where every record was recalled (infinite). Claims and verdicts: "
        f"[{summary_path.name}]({summary_path.name}).",
        "",
        markdown_table(ci_columns(rows, STAT_KEYS), TABLE_COLUMNS),
        "",
        "![hallucination vs loss](hallucination_vs_loss.png)",
        "",
    ]
    results = {
        "thresholds": rows,
        "seed_thresholds": seed_rows,
        "claims": [c.as_dict() for c in claims],
        "answer_entropy_nats": entropy,
        "answer_tokens_per_fact": tokens_per_fact,
        "ln2": LN2,
        "backbone": backbone,
    }
    summary_run = f"{NAME}/{cfg.run}/summary"
    tables = {"thresholds": rows}
    return finish_study(
        root, report, results, wandb=cfg.wandb, summary_run=summary_run, images=[image], tables=tables
    )


def _main(args: list[str] | None) -> None:
    cfg, flags = parse_study_args(HallucinationVsLossConfig, args, __doc__.splitlines()[0], PROG)
    results = run(cfg, resume=flags["resume"], overwrite=flags["overwrite"])
    print(markdown_table(ci_columns(results["thresholds"], STAT_KEYS), TABLE_COLUMNS))


def main(args: list[str] | None = None) -> None:
    """``python -m experiments.hallucination_vs_loss --config FILE [--quick] [--resume|--overwrite]``.

    Bad input ends with one line naming the value and the fix (``--debug``: the traceback).
    """
    run_cli(_main, args, prog=PROG)


if __name__ == "__main__":
    main()
