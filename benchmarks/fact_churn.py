"""Which facts a memorisation run gains and loses between validations, from its ``fact_evals.csv``.

::

    python benchmarks/fact_churn.py runs/mome_1k_nocap/fact_evals.csv [--out churn.csv]

Per validation (epoch >= 0): the hallucination rate, facts *gained* (not recalled at the previous
validation, recalled now) and *lost* (recalled before, not now), and the median and 90th percentile of the
facts' summed answer NLL. Then, at the last validation: how many facts are wrong, how many of those were
recalled at some earlier validation, and their summed NLL. A run whose facts are independent and whose
optimiser is stable loses (almost) none; many lost facts, or wrong facts far above ln 2, point at facts
undoing each other or at unstable steps. ``.csv.gz`` files are read as well.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding.errors import UserError, run_cli  # noqa: E402

COLUMNS = ("epoch", "fact_id", "nll_sum", "answer_exact")


def read_evals(path: Path) -> dict[int, dict[int, tuple[float, bool]]]:
    """``{epoch: {fact_id: (summed answer NLL, recalled)}}`` of the validations (epoch >= 0) in ``path``."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a run's fact_evals.csv")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path} lacks the columns {missing}; pass a fact_evals.csv written by memexp fit"
            )
        evals: dict[int, dict[int, tuple[float, bool]]] = {}
        for row in reader:
            epoch = int(row["epoch"])
            if epoch >= 0:  # -1 is the evaluation before training
                evals.setdefault(epoch, {})[int(row["fact_id"])] = (
                    float(row["nll_sum"]),
                    row["answer_exact"] == "1",
                )
    if not evals:
        raise UserError(f"{path} holds no validation after training started (epoch >= 0)")
    return evals


def churn(evals: dict[int, dict[int, tuple[float, bool]]]) -> list[dict[str, float]]:
    """One row per validation: rate, gained, lost, and the NLL median and 90th percentile."""
    rows, before = [], None
    for epoch in sorted(evals):
        facts = evals[epoch]
        recalled = {f for f, (_, ok) in facts.items() if ok}
        nll = sorted(v for v, _ in facts.values())
        rows.append(
            {
                "epoch": epoch,
                "hallucination": 1 - len(recalled) / len(facts),
                "gained": len(recalled - before) if before is not None else 0,
                "lost": len(before - recalled) if before is not None else 0,
                "nll_sum_median": statistics.median(nll),
                "nll_sum_p90": nll[int(0.9 * (len(nll) - 1))],
            }
        )
        before = recalled
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fact_evals", type=Path)
    parser.add_argument(
        "--out", type=Path, help="also write the per-validation rows as CSV (never overwritten)"
    )
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        raise UserError(f"{args.out} exists; pass another --out (results are never overwritten)")
    evals = read_evals(args.fact_evals)
    rows = churn(evals)
    print("epoch  hallucination  gained  lost  nll_sum_median  nll_sum_p90")
    for r in rows:
        print(
            f"{r['epoch']:5d}  {r['hallucination']:13.3f}  {r['gained']:6d}  {r['lost']:4d}"
            f"  {r['nll_sum_median']:14.3f}  {r['nll_sum_p90']:11.2f}"
        )
    last = evals[max(evals)]
    wrong = [f for f, (_, ok) in last.items() if not ok]
    once = {f for facts in evals.values() for f, (_, ok) in facts.items() if ok}
    nll = sorted(last[f][0] for f in wrong)
    print(f"last validation (epoch {max(evals)}): {len(wrong)} of {len(last)} facts wrong, ", end="")
    print(f"{len(once.intersection(wrong))} of them recalled at an earlier validation", end="")
    print(f"; their summed NLL median {statistics.median(nll):.2f} nats" if nll else "")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(args.out)


if __name__ == "__main__":
    run_cli(main, None, "fact_churn")
