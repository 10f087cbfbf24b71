"""Random-label memorisation study (Zhang et al. 2017 at small scale; Lamini App. A).

::

    python -m experiments.random_labels --config configs/experiments/random_labels.yaml --quick
    python -m experiments.random_labels --config configs/experiments/random_labels.yaml --resume true

For each corruption fraction p and method, a cell trains on the code-KB facts of
:mod:`experiments.code_facts` with ``round(p * n)`` answers replaced by random strings, starting from a
tiny LM pretrained on disjoint true facts (:mod:`experiments.base_model`). Recorded per cell: training
loss and exact-match training accuracy over epochs (on the answers trained on), epochs/steps to 50, 90
and 100% exact match, and held-out exact match on true answers of unseen pairs before and after.
Output in ``results/random_labels/<run>/``: ``table.csv``, ``curves.csv``, ``random_labels_curves.png``,
``random_labels_summary.png``, ``report.md``, ``results.json``; cells in ``cells/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding.errors import UserError, run_cli
from decoding.run_folder import atomic_savefig
from experiments.base_model import BaseConfig, pretrain_base
from experiments.cell import TrainConfig, read_rows, run_cell, write_rows
from experiments.checks import check_base, check_image, check_number, check_output, check_train
from experiments.code_facts import answer_entropy_nats, check_fraction, code_task, corrupt
from experiments.image_labels import ImageStudyConfig, run_image_cell
from experiments.study_cli import config_dict, parse_study_args
from experiments.study_folder import open_run_dir
from experiments.study_report import WANDB_PROJECT, finish_study, finish_wandb, markdown_table, wandb_logger

NAME = "random_labels"
PROG = "python -m experiments.random_labels"


@dataclass
class RandomLabelsConfig:
    """Settings of the random-label study.

    Attributes:
        output_root: results are written to ``<output_root>/random_labels/<run>``.
        run: name of the run folder.
        seed: seeds the task, the corruption, the models and the data order.
        fractions: corruption fractions p in [0, 1].
        methods: memorisation methods (``full``, ``lora``, ``mome``; see :mod:`experiments.methods`).
        num_train: facts trained on per cell.
        num_heldout: held-out facts (true answers, unseen pairs) for generalisation.
        code_len: characters per word code (answers have twice as many).
        base: the starting model (pretrained on disjoint true facts).
        train: training of each cell.
        image: the image half (digits with corrupted labels on prompt_pool's tiny ViT).
        wandb: log every cell and the summary to wandb (offline).
        quick_settings: overrides applied by ``--quick`` (dotted keys such as ``train.max_epochs``).
    """

    output_root: str = "results"
    run: str = "default"
    seed: int = 0
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])
    num_train: int = 200
    num_heldout: int = 100
    code_len: int = 3
    base: BaseConfig = field(default_factory=BaseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    image: ImageStudyConfig = field(default_factory=ImageStudyConfig)
    wandb: bool = True
    quick_settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse any bad setting (UserError naming it) before any work starts."""
        check_output(self.output_root, self.run)
        check_number("seed", self.seed, 0, integer=True)
        if not self.fractions:
            raise UserError("fractions is empty; give corruption fractions in [0, 1], e.g. [0, 0.5, 1]")
        for p in self.fractions:
            check_fraction(p)
        check_number("num_train", self.num_train, 1, integer=True, example=100)
        check_number("num_heldout", self.num_heldout, 0, integer=True, example=100)
        layout = check_base(self.base)
        code_task(self.base.pretrain_facts + self.num_train, self.num_heldout, self.seed, self.code_len)
        check_train(self.train, self.methods, layout, self.base.backbone)
        check_image(self.image)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def cell_row(p: float, summary: dict[str, Any], fact_rows: list[dict[str, float]] | None) -> dict[str, Any]:
    """One row of the study table from a cell's summary and its final per-fact records (text cells)."""
    clean = noisy = None
    if fact_rows:
        last_epoch = max(r["epoch"] for r in fact_rows)
        final = [r for r in fact_rows if r["epoch"] == last_epoch]
        clean = [r["exact"] for r in final if not r["corrupted"]]
        noisy = [r["exact"] for r in final if r["corrupted"]]
    n = summary["num_heldout"]
    lo, hi = wilson_interval(summary["heldout_exact_after"] * n, n) if n else (None, None)
    return {
        "p": p,
        "method": summary["method"],
        "train_exact": summary["final_train_exact"],
        "exact_true_part": sum(clean) / len(clean) if clean else None,
        "exact_random_part": sum(noisy) / len(noisy) if noisy else None,
        "final_loss": summary["final_train_loss"],
        "epochs_to_90": summary["epochs_to_90"],
        "epochs_to_100": summary["epochs_to_100"],
        "steps_to_100": summary["steps_to_100"],
        "heldout_before": summary["heldout_exact_before"],
        "heldout_after": summary["heldout_exact_after"],
        "heldout_after_ci_lo": lo,
        "heldout_after_ci_hi": hi,
        "trainable_params": summary["trainable_params"],
        "wall_time_s": summary["wall_time_s"],
    }


def plot_study(
    rows: list[dict[str, Any]], curves: list[dict[str, Any]], out: Path, prefix: str
) -> list[Path]:
    """Training loss / exact match over epochs per method and p; steps to fit and held-out accuracy vs p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = sorted({r["p"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colour = {p: cmap(i / max(1, len(fractions) - 1)) for i, p in enumerate(fractions)}
    fig, axes = plt.subplots(2, len(methods), figsize=(4 * len(methods), 6), squeeze=False, sharex="col")
    for j, method in enumerate(methods):
        for p in fractions:
            pts = [c for c in curves if c["method"] == method and c["p"] == p and c["epoch"] > 0]
            epochs = [c["epoch"] for c in pts]
            axes[0, j].plot(epochs, [c["train_loss"] for c in pts], color=colour[p], label=f"p={p:g}")
            axes[1, j].plot(epochs, [c["train/exact"] for c in pts], color=colour[p], label=f"p={p:g}")
        axes[0, j].set_title(method)
        axes[0, j].set_yscale("log")
        axes[0, j].set_ylabel("training loss (nats/answer token)")
        axes[1, j].set_ylabel("training exact match")
        axes[1, j].set_xlabel("epoch")
        axes[1, j].set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    curves_png = out / f"{prefix}_curves.png"
    atomic_savefig(fig, curves_png, dpi=80)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["p"])
        ps = [r["p"] for r in mine]
        steps = [r["steps_to_100"] if r["steps_to_100"] is not None else math.nan for r in mine]
        ax1.plot(ps, steps, "o-", color=f"C{k}", label=method)
        ax2.plot(ps, [r["heldout_after"] for r in mine], "o-", color=f"C{k}", label=f"{method} after")
        lo = [r["heldout_after_ci_lo"] for r in mine]
        hi = [r["heldout_after_ci_hi"] for r in mine]
        ax2.fill_between(ps, lo, hi, color=f"C{k}", alpha=0.15)
    ax2.axhline(rows[0]["heldout_before"], color="k", ls="--", label="before (base)")
    ax1.set_xlabel("corruption fraction p")
    ax1.set_ylabel("steps to 100% training exact match")
    ax2.set_xlabel("corruption fraction p")
    ax2.set_ylabel("held-out exact match (true answers)")
    ax2.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    summary_png = out / f"{prefix}_summary.png"
    atomic_savefig(fig, summary_png, dpi=80)
    plt.close(fig)
    return [curves_png, summary_png]


TABLE_COLUMNS = [
    "p", "method", "train_exact", "exact_true_part", "exact_random_part", "final_loss",
    "epochs_to_90", "epochs_to_100", "steps_to_100", "heldout_before", "heldout_after",
]  # fmt: skip
IMAGE_COLUMNS = [c for c in TABLE_COLUMNS if c not in ("exact_true_part", "exact_random_part")]


def run(cfg: RandomLabelsConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the study and write its tables, plots and report; return ``results.json``."""
    from tqdm.auto import tqdm

    cfg.validate()
    root = open_run_dir(Path(cfg.output_root) / NAME / cfg.run, config_dict(cfg), resume, overwrite)
    n_pre = cfg.base.pretrain_facts
    task = code_task(n_pre + cfg.num_train, cfg.num_heldout, cfg.seed, cfg.code_len)
    pretrain, study = task.train[:n_pre], task.train[n_pre:]
    backbone = (
        pretrain_base(root / "base", cfg.base, pretrain, cfg.seed, cfg.train.accelerator)
        if n_pre
        else cfg.base.backbone
    )

    rows, curves = [], []
    cells = [(p, m) for p in cfg.fractions for m in cfg.methods]
    for p, method in tqdm(cells, desc="random-label cells"):
        facts, corrupted = corrupt(study, p, cfg.seed)
        cell_dir = root / "cells" / f"p{p:.2f}_{method}"
        logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{cfg.run}/p{p:.2f}_{method}", NAME)
        summary = run_cell(
            cell_dir, method, backbone, facts, task.heldout, corrupted, cfg.train, cfg.seed, logger
        )
        finish_wandb(logger)
        rows.append(cell_row(p, summary, read_rows(cell_dir / "fact_evals.csv")))
        curves += [{"p": p, "method": method, **c} for c in read_rows(cell_dir / "curve.csv")]

    write_rows(root / "table.csv", rows)
    write_rows(root / "curves.csv", curves)
    images = plot_study(rows, curves, root, "random_labels")

    image_rows, image_curves = [], []
    cells = [(p, m) for p in cfg.fractions for m in cfg.image.methods] if cfg.image.enabled else []
    for p, method in tqdm(cells, desc="image cells"):
        cell_dir = root / "image_cells" / f"p{p:.2f}_{method}"
        logger = wandb_logger(cfg.wandb, root, WANDB_PROJECT, f"{cfg.run}/image_p{p:.2f}_{method}", NAME)
        summary = run_image_cell(cell_dir, method, p, cfg.image, cfg.seed, logger)
        finish_wandb(logger)
        image_rows.append(cell_row(p, summary, None))
        image_curves += [{"p": p, "method": method, **c} for c in read_rows(cell_dir / "curve.csv")]
    if image_rows:
        write_rows(root / "image_table.csv", image_rows)
        write_rows(root / "image_curves.csv", image_curves)
        images += plot_study(image_rows, image_curves, root, "image_labels")
    entropy = answer_entropy_nats(2 * cfg.code_len)
    report = [
        f"# Random-label study `{cfg.run}`",
        "",
        f"{cfg.num_train} code-KB facts per cell (answers {2 * cfg.code_len} chars over [A-Z0-9], random "
        f"answer entropy {entropy:.1f} nats), base `{backbone}`, methods {cfg.methods}, seed {cfg.seed}.",
        "Held-out: exact match on true answers of unseen pairs (95% Wilson CI in table.csv).",
        "",
        markdown_table(rows, TABLE_COLUMNS),
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
            "`heldout_before` is the untrained head.",
            "",
            markdown_table(image_rows, IMAGE_COLUMNS),
            "",
            "![image curves](image_labels_curves.png)",
            "![image summary](image_labels_summary.png)",
            "",
        ]
    results = {"table": rows, "image_table": image_rows, "answer_entropy_nats": entropy, "backbone": backbone}
    tables = {"table": rows, "image": image_rows}
    return finish_study(
        root, report, results, wandb=cfg.wandb, summary_run=f"{cfg.run}/summary", images=images, tables=tables
    )


def _main(args: list[str] | None) -> None:
    cfg, flags = parse_study_args(RandomLabelsConfig, args, __doc__.splitlines()[0], PROG)
    results = run(cfg, resume=flags["resume"], overwrite=flags["overwrite"])
    print(markdown_table(results["table"], TABLE_COLUMNS))
    if results["image_table"]:
        print(markdown_table(results["image_table"], IMAGE_COLUMNS))


def main(args: list[str] | None = None) -> None:
    """``python -m experiments.random_labels --config FILE [--quick] [--resume|--overwrite] [--debug]``.

    Bad input ends with one line naming the value and the fix (``--debug``: the traceback).
    """
    run_cli(_main, args, prog=PROG)


if __name__ == "__main__":
    main()
