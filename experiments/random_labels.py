"""Random-label memorisation study (Zhang et al. 2017 at small scale; Lamini App. A).

::

    python -m experiments.random_labels --config configs/experiments/random_labels.yaml --quick
    python -m experiments.random_labels --config configs/experiments/random_labels.yaml --resume true

For each corruption fraction p and method, a cell trains on the code-KB facts of
:mod:`experiments.code_facts` with ``round(p * n)`` answers replaced by random strings, starting from a
tiny LM pretrained on disjoint true facts (:mod:`experiments.base_model`). Recorded per cell: training
loss and exact-match training accuracy over epochs (on the answers trained on), epochs/steps to 50, 90
and 100% exact match, and held-out exact match on true answers of unseen pairs before and after.
With ``task: known`` a real backbone is used as it is, on questions it already answers
(:mod:`experiments.known_facts`): random labels are other answers of the same family, and held-out accuracy
is whether the greedy answer to questions of other families still contains the expected word.
Several processes can share one run folder's cells (:mod:`experiments.cell_claim`).
Output in ``results/random_labels/<run>/``: ``table.csv``, ``curves.csv``, ``random_labels_curves.png``,
``random_labels_summary.png``, ``report.md``, ``summary.md`` (claims and verdicts), ``results.json``;
one cell per (p, method, seed) in ``cells/p<p>_<method>_s<seed>`` (each resumable on its own).
Every table entry is the mean over ``seeds`` with its 95% Student-t interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from decoding.errors import UserError, run_cli
from experiments.base_model import BaseConfig, pretrain_base
from experiments.cell import CELL_FILE, TrainConfig, read_rows, run_cell, write_rows
from experiments.cell_claim import run_claimed
from experiments.cell_interference import COLUMNS as INTERFERENCE_COLUMNS
from experiments.cell_interference import (
    InterferenceConfig,
    backbone_measurement,
    interference_columns,
    measure_model,
)
from experiments.checks import check_base, check_image, check_number, check_output, check_seeds, check_train
from experiments.claims import write_summary
from experiments.code_facts import answer_entropy_nats, check_fraction, code_task, corrupt
from experiments.image_labels import ImageStudyConfig, run_image_cell
from experiments.known_facts import heldout_after_fit, known_task, load_or_scan
from experiments.random_labels_report import heldout_claims, plot_study
from experiments.seed_stats import aggregate, ci_columns
from experiments.study_cli import config_dict, parse_study_args
from experiments.study_folder import open_run_dir
from experiments.study_report import WANDB_PROJECT, finish_study, finish_wandb, markdown_table, wandb_logger

NAME = "random_labels"


@dataclass(frozen=True)
class TaskText:
    """How a task's held-out measure is read and named, and how its reports describe it."""

    metric: str  # the held-out column of a cell summary (heldout_<metric>_before / _after)
    measure: str  # the held-out measure in the claims' sentences
    label: str  # the y label of the held-out plot
    facts: str  # what is trained
    held: str  # what held-out accuracy is
    answers: str  # what a random answer is ({n}: answer length, {h}: its entropy)


TASKS = {
    "code_kb": TaskText(
        "exact",
        "exact-match",
        "held-out exact match (fraction, true answers)",
        "code-KB facts",
        "exact match on true answers of unseen pairs",
        "answers {n} chars over [A-Z0-9], random answer entropy {h:.1f} nats",
    ),
    "known": TaskText(
        "correct",
        "accuracy",
        "held-out accuracy (fraction whose\ngreedy answer has the right word)",
        "questions the backbone answers correctly, with one-word answers",
        "questions of other families the backbone answered correctly; accuracy: its greedy answer still "
        "contains the expected word (`heldout_sentence_after`: still the backbone's own sentence)",
        "a random answer is another answer of the same family",
    ),
}
PROG = "python -m experiments.random_labels"


@dataclass
class RandomLabelsConfig:
    """Settings of the random-label study.

    Attributes:
        output_root: results are written to ``<output_root>/random_labels/<run>``.
        run: name of the run folder.
        seed: seeds the task (facts, split) and the base model.
        seeds: one cell per (p, method, seed); a cell seed sets the corrupted facts and their random
            answers, the initialisation and the data order. Tables give mean and 95% t-interval.
        unchanged_margin: "held-out answers mostly unchanged" means a held-out exact-match change
            within +- this margin (the decision boundary of the summary's verdict).
        fractions: corruption fractions p in [0, 1].
        methods: memorisation methods (``full``, ``lora``, ``mome``; see :mod:`experiments.methods`).
        task: ``code_kb`` (the code knowledge base on a base model pretrained on it,
            :mod:`experiments.code_facts`) or ``known`` (questions a real backbone already answers,
            :mod:`experiments.known_facts`; needs ``base.pretrain_facts: 0``).
        num_train: facts trained on per cell.
        num_heldout: held-out facts (true answers, unseen pairs) for generalisation.
        code_len: characters per word code (answers have twice as many).
        base: the starting model (pretrained on disjoint true facts).
        train: training of each cell.
        image: the image half (digits with corrupted labels on prompt_pool's tiny ViT).
        interference: per cell, real-text NLL, factual MC and general answers against the backbone's
            (:mod:`experiments.cell_interference`; off by default: about a minute per cell on SmolLM2).
        wandb: log every cell and the summary to wandb (offline).
        quick_settings: overrides applied by ``--quick`` (dotted keys such as ``train.max_epochs``).
    """

    output_root: str = "results"
    run: str = "default"
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    unchanged_margin: float = 0.05
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])
    task: str = "code_kb"
    num_train: int = 200
    num_heldout: int = 100
    code_len: int = 3
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    image: ImageStudyConfig = field(default_factory=ImageStudyConfig)
    interference: InterferenceConfig = field(default_factory=InterferenceConfig)
    wandb: bool = True
    quick_settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse any bad setting (UserError naming it) before any work starts."""
        check_output(self.output_root, self.run)
        check_number("seed", self.seed, 0, integer=True)
        check_seeds(self.seeds)
        check_number("unchanged_margin", self.unchanged_margin, 0.0, example=0.05)
        if not self.fractions:
            raise UserError("fractions is empty; give corruption fractions in [0, 1], e.g. [0, 0.5, 1]")
        for p in self.fractions:
            check_fraction(p)
        check_number("num_train", self.num_train, 1, integer=True, example=100)
        check_number("num_heldout", self.num_heldout, 0, integer=True, example=100)
        layout = check_base(self.base)
        if self.task not in TASKS:
            raise UserError(f"task={self.task!r} is unknown; choose from {sorted(TASKS)}")
        if self.task == "known" and self.base.pretrain_facts:
            raise UserError(
                "task 'known' asks the backbone as it is; set base.pretrain_facts: 0 "
                f"(got {self.base.pretrain_facts})"
            )
        if self.task == "code_kb":
            code_task(self.base.pretrain_facts + self.num_train, self.num_heldout, self.seed, self.code_len)
        check_train(self.train, self.methods, layout, self.base.backbone)
        check_image(self.image)
        self.interference.validate()


def final_nll(fact_rows: list[dict[str, float]]) -> float | None:
    """Mean over trained facts of the evaluated per-fact answer NLL (nats/token) at the last evaluation."""
    if not fact_rows:
        return None
    last_epoch = max(r["epoch"] for r in fact_rows)
    final = [r["nll"] for r in fact_rows if r["epoch"] == last_epoch]
    return sum(final) / len(final)


def nll_curve(fact_rows: list[dict[str, float]]) -> dict[int, float]:
    """Per evaluation (epoch), the mean over trained facts of the evaluated per-fact answer NLL."""
    sums: dict[int, list[float]] = {}
    for r in fact_rows:
        sums.setdefault(int(r["epoch"]), []).append(r["nll"])
    return {e: sum(v) / len(v) for e, v in sums.items()}


def cell_row(
    p: float,
    seed: int,
    summary: dict[str, Any],
    fact_rows: list[dict[str, float]] | None,
    heldout_metric: str = "exact",
) -> dict[str, Any]:
    """One row (one seed) of the study table from a cell's summary and its per-fact records (text cells).

    ``heldout_metric``: the held-out column of the cell summary (``exact``; ``correct`` for the
    known-facts task: :func:`experiments.known_facts.heldout_accuracy`).
    """
    clean = noisy = None
    if fact_rows:
        last_epoch = max(r["epoch"] for r in fact_rows)
        final = [r for r in fact_rows if r["epoch"] == last_epoch]
        clean = [r["exact"] for r in final if not r["corrupted"]]
        noisy = [r["exact"] for r in final if r["corrupted"]]
    before = summary.get(f"heldout_{heldout_metric}_before")
    after = summary.get(f"heldout_{heldout_metric}_after")
    fitted = summary["steps_to_100"] is not None
    return {
        "p": p,
        "method": summary["method"],
        "seed": seed,
        "train_exact": summary["final_train_exact"],
        "exact_true_part": sum(clean) / len(clean) if clean else None,
        "exact_random_part": sum(noisy) / len(noisy) if noisy else None,
        "final_nll": final_nll(fact_rows) if fact_rows else summary["final_train_loss"],
        "fitted": float(fitted),
        "epochs_to_90": summary["epochs_to_90"],
        "epochs_to_100": summary["epochs_to_100"],
        "steps_to_100": summary["steps_to_100"],
        "heldout_before": before,
        "heldout_after": after,
        "heldout_change": after - before if after is not None and before is not None else None,
        "heldout_sentence_after": (
            summary.get("heldout_answer_exact_after") if heldout_metric != "exact" else None
        ),
        **{k: summary.get(k) for k in INTERFERENCE_COLUMNS},
        "trainable_params": summary["trainable_params"],
        "wall_time_s": summary["wall_time_s"],
    }


STAT_KEYS = [
    "train_exact", "exact_true_part", "exact_random_part", "final_nll", "fitted", "epochs_to_90",
    "epochs_to_100", "steps_to_100", "heldout_before", "heldout_after", "heldout_change",
    "heldout_sentence_after", *INTERFERENCE_COLUMNS, "wall_time_s",
]  # fmt: skip
TABLE_COLUMNS = [
    "p", "method", "n_seeds", "fitted", "train_exact", "exact_true_part", "exact_random_part", "final_nll",
    "steps_to_100", "heldout_after", "heldout_change",
]  # fmt: skip


def table_columns(cfg: RandomLabelsConfig) -> list[str]:
    """The report table's columns: the known-facts task adds the held-out same-sentence fraction, the
    interference measurement its ratios."""
    extra = ["heldout_sentence_after"] if cfg.task == "known" else []
    return TABLE_COLUMNS + extra + (list(INTERFERENCE_COLUMNS) if cfg.interference.enabled else [])


IMAGE_COLUMNS = [c for c in TABLE_COLUMNS if c not in ("exact_true_part", "exact_random_part")]
CI_NOTE = (
    "Every entry: mean over seeds [95% Student-t interval over seeds]; `fitted` is the fraction of seeds "
    "that reached 100% training exact match, `steps_to_100` the mean over the seeds that did."
)


def _run_cells(
    cfg: RandomLabelsConfig, root: Path, backbone: str, task: Any
) -> tuple[list[dict], list[dict]]:
    """Train (or read back) every text cell, one per (p, method, seed); return per-seed rows and curves.

    Cells already held by another process on this run folder are left to it (:mod:`experiments.cell_claim`).
    """
    cells = [(p, m, s) for p in cfg.fractions for m in cfg.methods for s in cfg.seeds]
    dirs = {c: root / "cells" / f"p{c[0]:.2f}_{c[1]}_s{c[2]}" for c in cells}
    pools = getattr(task, "pools", None)
    after_fit = _after_fit(cfg, root, backbone, task)

    def job(p: float, method: str, seed: int) -> Callable[[], object]:
        def train() -> object:
            facts, corrupted = corrupt(task.train, p, seed, pools)
            cell_dir = dirs[(p, method, seed)]
            logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{cfg.run}/{cell_dir.name}", NAME)
            summary = run_cell(
                cell_dir, method, backbone, facts, task.heldout, corrupted, cfg.train, seed, logger, after_fit
            )
            finish_wandb(logger)
            return summary

        return train

    run_claimed([(dirs[c], job(*c)) for c in cells])
    rows, curves = [], []
    for p, method, seed in cells:
        cell_dir = dirs[(p, method, seed)]
        summary = json.loads((cell_dir / CELL_FILE).read_text())
        fact_rows = read_rows(cell_dir / "fact_evals.csv")
        rows.append(cell_row(p, seed, summary, fact_rows, TASKS[cfg.task].metric))
        nll = nll_curve(fact_rows)
        curves += [
            {"p": p, "method": method, "seed": seed, **c, "nll": nll[int(c["epoch"])]}
            for c in read_rows(cell_dir / "curve.csv")
        ]
    return rows, curves


def _after_fit(cfg: RandomLabelsConfig, root: Path, backbone: str, task: Any) -> Callable | None:
    """What runs on each trained cell: the known-facts held-out accuracy and the interference measurement."""
    parts = []
    if cfg.task == "known":
        parts.append(heldout_after_fit(root, backbone, task))
    if cfg.interference.enabled:
        before = backbone_measurement(root, backbone, cfg.interference)

        def interference(module: Any, data: Any) -> dict[str, Any]:
            after = measure_model(module.model, data.tokenizer, cfg.interference)
            return interference_columns(before, after)

        parts.append(interference)
    if not parts:
        return None
    return lambda module, data: {k: v for part in parts for k, v in part(module, data).items()}


def _run_image_cells(cfg: RandomLabelsConfig, root: Path) -> tuple[list[dict], list[dict]]:
    """Train (or read back) every image cell, one per (p, method, seed)."""
    from tqdm.auto import tqdm

    rows, curves = [], []
    cells = [(p, m, s) for p in cfg.fractions for m in cfg.image.methods for s in cfg.seeds]
    for p, method, seed in tqdm(cells if cfg.image.enabled else [], desc="image cells"):
        name = f"p{p:.2f}_{method}_s{seed}"
        cell_dir = root / "image_cells" / name
        logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{cfg.run}/image_{name}", NAME)
        summary = run_image_cell(cell_dir, method, p, cfg.image, seed, logger)
        finish_wandb(logger)
        rows.append(cell_row(p, seed, summary, None))
        curves += [{"p": p, "method": method, "seed": seed, **c} for c in read_rows(cell_dir / "curve.csv")]
    return rows, curves


def run(cfg: RandomLabelsConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the study and write its tables, plots, report and summary; return ``results.json``."""
    cfg.validate()
    root = open_run_dir(Path(cfg.output_root) / NAME / cfg.run, config_dict(cfg), resume, overwrite)
    n_pre = cfg.base.pretrain_facts
    backbone = cfg.base.backbone
    if cfg.task == "known":
        task: Any = known_task(load_or_scan(root, backbone), cfg.num_train, cfg.num_heldout, cfg.seed)
    else:
        code = code_task(n_pre + cfg.num_train, cfg.num_heldout, cfg.seed, cfg.code_len)
        task = replace(code, train=code.train[n_pre:])
        if n_pre:
            backbone = pretrain_base(
                root / "base", cfg.base, code.train[:n_pre], cfg.seed, cfg.train.accelerator
            )
    seed_rows, curves = _run_cells(cfg, root, backbone, task)
    rows = aggregate(seed_rows, ["p", "method"], STAT_KEYS)
    write_rows(root / "seed_table.csv", seed_rows)
    write_rows(root / "table.csv", rows)
    write_rows(root / "curves.csv", curves)
    text = TASKS[cfg.task]
    images = plot_study(rows, curves, root, "random_labels", "nll", text.label)

    image_seed_rows, image_curves = _run_image_cells(cfg, root)
    image_rows = aggregate(image_seed_rows, ["p", "method"], STAT_KEYS)
    if image_rows:
        write_rows(root / "image_seed_table.csv", image_seed_rows)
        write_rows(root / "image_table.csv", image_rows)
        write_rows(root / "image_curves.csv", image_curves)
        images += plot_study(image_rows, image_curves, root, "image_labels", "train_loss")
    entropy = answer_entropy_nats(2 * cfg.code_len)
    claims = heldout_claims(rows, cfg.unchanged_margin, text.measure)
    intro = [
        f"Run `{cfg.run}`: {cfg.num_train} {text.facts} per cell, base `{backbone}`, methods {cfg.methods}, "
        f"fractions {cfg.fractions}, seeds {cfg.seeds} (task and base model: seed {cfg.seed}; each cell seed "
        "sets the corrupted facts, their random answers, the initialisation and the data order).",
        f"Intervals: 95% Student-t over seeds. Held-out ({cfg.num_heldout} questions): {text.held}.",
    ]
    summary_path = write_summary(root, "Random-label study: summary", intro, claims)
    report = [
        f"# Random-label study `{cfg.run}`",
        "",
        f"{cfg.num_train} {text.facts} per cell ({text.answers.format(n=2 * cfg.code_len, h=entropy)}), "
        f"base `{backbone}`, methods {cfg.methods}, seeds {cfg.seeds}. Held-out: {text.held}.",
        CI_NOTE + " `final_nll`: evaluated answer NLL (nats/token), mean over all trained facts. Claims and "
        f"verdicts: [{summary_path.name}]({summary_path.name}).",
        "",
        markdown_table(ci_columns(rows, STAT_KEYS), table_columns(cfg)),
        "",
        "![curves](random_labels_curves.png)",
        "![summary](random_labels_summary.png)",
        "",
    ]
    if image_rows:
        report += [
            "## Digits with corrupted labels (tiny pretrained ViT of prompt_pool)",
            "",
            f"{cfg.image.num_train or 880} training images, 378 test images (true labels); "
            "`heldout_change` is against the untrained head; `final_nll` is the training loss.",
            "",
            markdown_table(ci_columns(image_rows, STAT_KEYS), IMAGE_COLUMNS),
            "",
            "![image curves](image_labels_curves.png)",
            "![image summary](image_labels_summary.png)",
            "",
        ]
    results = {
        "table": rows,
        "seed_table": seed_rows,
        "image_table": image_rows,
        "image_seed_table": image_seed_rows,
        "claims": [c.as_dict() for c in claims],
        "answer_entropy_nats": entropy,
        "backbone": backbone,
    }
    tables = {"table": rows, "image": image_rows}
    return finish_study(
        root, report, results, wandb=cfg.wandb, summary_run=f"{cfg.run}/summary", images=images, tables=tables
    )


def _main(args: list[str] | None) -> None:
    cfg, flags = parse_study_args(RandomLabelsConfig, args, __doc__.splitlines()[0], PROG)
    results = run(cfg, resume=flags["resume"], overwrite=flags["overwrite"])
    print(markdown_table(ci_columns(results["table"], STAT_KEYS), table_columns(cfg)))
    if results["image_table"]:
        print(markdown_table(ci_columns(results["image_table"], STAT_KEYS), IMAGE_COLUMNS))


def main(args: list[str] | None = None) -> None:
    """``python -m experiments.random_labels --config FILE [--quick] [--resume|--overwrite] [--debug]``.

    Bad input ends with one line naming the value and the fix (``--debug``: the traceback).
    """
    run_cli(_main, args, prog=PROG)


if __name__ == "__main__":
    main()
