"""Hallucination vs training loss: when does a memorised fact become exactly recalled, per method and head?

::

    python -m experiments.hallucination_vs_loss \
        --config configs/experiments/hallucination_vs_loss.yaml --quick

Every method memorises the same facts with random answers (p = 1 of :mod:`experiments.random_labels`;
Lamini's setting) from the same base model. At every evaluation each fact's answer NLL (summed and per
token, worst token) and exact recall are recorded for greedy decoding and for every decoding head
(DoLa, SLED, a DeRa lambda sweep whose reference is the model with its adaptation off; for full
fine-tuning the base weights). From these records:

- hallucination rate (1 - exact) against the mean training loss of the epoch, per method and head;
- the loss threshold below which facts are recalled (:mod:`experiments.threshold`), on the summed and the
  per-token axis, beside ln 2 (the sufficient bound of docs/algorithms/memorisation.md) and the
  entropy of a random answer;
- per head, the threshold on the *greedy* NLL axis: a head with a higher threshold recalls facts at a
  higher loss.

Output in ``results/hallucination_vs_loss/<run>/``: ``thresholds.csv``, ``curves.csv``, ``binned.csv``,
``hallucination_vs_loss.png``, ``report.md``, ``results.json``; cells in ``cells/<method>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.errors import run_cli
from decoding.run_folder import atomic_savefig
from experiments.base_model import BaseConfig, pretrain_base
from experiments.cell import TrainConfig, read_rows, run_cell, write_rows
from experiments.checks import check_base, check_number, check_output, check_train
from experiments.code_facts import answer_entropy_nats, code_task, corrupt
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
        seed: seeds the facts, the models and the data order.
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
        check_number("num_facts", self.num_facts, 1, integer=True, example=100)
        layout = check_base(self.base)
        code_task(self.base.pretrain_facts + self.num_facts, 0, self.seed, self.code_len)
        check_train(self.train, self.methods, layout, self.base.backbone)


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
        rows.append(
            {
                "method": method,
                "head": "greedy" if key == "exact" else key.split("/", 1)[1],
                "threshold_nll_sum": tau_sum,
                "threshold_nll_tok": tau_tok,
                "stump_accuracy": acc,
                "safe_nll_sum": safe_threshold(nll_sum, hits),
                "exact_below_ln2": sum(below) / len(below) if below else None,
                "final_hallucination": 1.0 - sum(final) / len(final),
                "entropy_nats": entropy,
            }
        )
    return rows


def plot_experiment(curves: list[dict], facts: dict[str, list[dict]], rows: list[dict], out: Path) -> Path:
    """Left: hallucination rate vs training loss (greedy solid, heads dashed) per method.
    Right: exact match binned by summed answer NLL, with ln 2, the estimated thresholds and the entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(facts)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, method in enumerate(methods):
        pts = [c for c in curves if c["method"] == method and c["epoch"] > 0]
        loss = [c["train_loss"] for c in pts]
        ax1.plot(
            loss, [1 - c["train/exact"] for c in pts], "o-", ms=3, color=f"C{k}", label=f"{method} greedy"
        )
        for j, key in enumerate(sorted(k2 for k2 in pts[0] if k2.startswith("train/exact/"))):
            style = ["--", ":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2)), (0, (3, 1))][j % 6]
            ax1.plot(
                loss, [1 - c[key] for c in pts], ls=style, color=f"C{k}", lw=1, label=f"{method} {key[12:]}"
            )
        records = facts[method]
        nll = [r["nll_sum"] for r in records]
        binned = binned_exact(nll, [bool(r["exact"]) for r in records], log_edges(nll))
        ax2.step(
            [b["hi"] for b in binned], [b["exact"] for b in binned], where="pre", color=f"C{k}", label=method
        )
        tau = next(r["threshold_nll_sum"] for r in rows if r["method"] == method and r["head"] == "greedy")
        ax2.axvline(tau, color=f"C{k}", ls="--", lw=1, label=f"{method} threshold {tau:.2f}")
    entropy = rows[0]["entropy_nats"]
    ax2.axvline(LN2, color="k", ls=":", label="ln 2 (sufficient)")
    ax2.axvline(entropy, color="grey", ls="-.", label=f"random-answer entropy {entropy:.1f}")
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("training loss (nats/answer token, epoch mean), decreasing →")
    ax1.set_ylabel("hallucination rate (trained facts)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=6, ncol=2)
    ax2.set_xscale("log")
    ax2.set_xlabel("summed answer NLL of a fact (nats, greedy model)")
    ax2.set_ylabel("exact recall (greedy)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=6)
    fig.tight_layout()
    path = out / "hallucination_vs_loss.png"
    atomic_savefig(fig, path, dpi=80)
    plt.close(fig)
    return path


TABLE_COLUMNS = [
    "method", "head", "threshold_nll_sum", "threshold_nll_tok", "stump_accuracy", "safe_nll_sum",
    "exact_below_ln2", "final_hallucination",
]  # fmt: skip


def run(cfg: HallucinationVsLossConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment and write its tables, plot and report; return ``results.json``."""
    from tqdm.auto import tqdm

    cfg.validate()
    root = open_run_dir(Path(cfg.output_root) / NAME / cfg.run, config_dict(cfg), resume, overwrite)
    n_pre = cfg.base.pretrain_facts
    task = code_task(n_pre + cfg.num_facts, 0, cfg.seed, cfg.code_len)
    pretrain = task.train[:n_pre]
    facts, corrupted = corrupt(task.train[n_pre:], 1.0, cfg.seed)
    backbone = cfg.base.backbone
    if n_pre:
        backbone = pretrain_base(root / "base", cfg.base, pretrain, cfg.seed, cfg.train.accelerator)

    entropy = answer_entropy_nats(2 * cfg.code_len)
    curves, fact_records, rows, binned = [], {}, [], []
    for method in tqdm(cfg.methods, desc="memorisation runs"):
        cell_dir = root / "cells" / method
        logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{NAME}/{cfg.run}/{method}", NAME)
        run_cell(cell_dir, method, backbone, facts, [], corrupted, cfg.train, cfg.seed, logger)
        finish_wandb(logger)
        records = read_rows(cell_dir / "fact_evals.csv")
        fact_records[method] = records
        curves += [{"method": method, **c} for c in read_rows(cell_dir / "curve.csv")]
        rows += head_thresholds(method, records, entropy)
        nll = [r["nll_sum"] for r in records]
        binned += [
            {"method": method, **b}
            for b in binned_exact(nll, [bool(r["exact"]) for r in records], log_edges(nll))
        ]

    write_rows(root / "thresholds.csv", rows)
    write_rows(root / "curves.csv", curves)
    write_rows(root / "binned.csv", binned)
    image = plot_experiment(curves, fact_records, rows, root)
    tokens = sum(r["num_tokens"] for r in next(iter(fact_records.values()))) / cfg.num_facts
    tokens /= len({r["epoch"] for r in next(iter(fact_records.values()))})
    report = [
        f"# Hallucination vs loss `{cfg.run}`",
        "",
        f"{cfg.num_facts} facts with random answers of {2 * cfg.code_len} chars over [A-Z0-9]: entropy "
        f"H = {entropy:.1f} nats per answer, {tokens:.1f} scored tokens per fact (answer + EOS), "
        f"so H/token = "
        f"{entropy / tokens:.2f} nats. Sufficient bound for greedy recall: summed NLL < ln 2 = {LN2:.3f}.",
        f"Base `{backbone}`; thresholds are decision stumps on the greedy model's NLL (see threshold.py).",
        "",
        markdown_table(rows, TABLE_COLUMNS),
        "",
        "![hallucination vs loss](hallucination_vs_loss.png)",
        "",
    ]
    results = {
        "thresholds": rows,
        "answer_entropy_nats": entropy,
        "answer_tokens_per_fact": tokens,
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
    print(markdown_table(results["thresholds"], TABLE_COLUMNS))


def main(args: list[str] | None = None) -> None:
    """``python -m experiments.hallucination_vs_loss --config FILE [--quick] [--resume|--overwrite]``.

    Bad input ends with one line naming the value and the fix (``--debug``: the traceback).
    """
    run_cli(_main, args, prog=PROG)


if __name__ == "__main__":
    main()
