"""benchmarks/fact_churn.py: gained and lost facts between validations, from a hand-written fact_evals.csv."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fact_churn import churn, main, read_evals
from decoding.errors import UserError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fact_churn.py"
HEADER = "epoch,step,fact_id,nll,nll_sum,max_tok_nll,min_tok_p,exact,answer_exact,num_tokens\n"
# facts 0..2; epoch -1 (before training) is ignored. Epoch 1: 0 recalled. Epoch 3: 1 gained, 0 kept.
# Epoch 5: 0 lost (nll 9), 2 gained, 1 kept.
ROWS = [
    (-1, 0, 9.0, 0),
    (-1, 1, 9.0, 0),
    (-1, 2, 9.0, 0),
    (1, 0, 0.1, 1),
    (1, 1, 5.0, 0),
    (1, 2, 6.0, 0),
    (3, 0, 0.1, 1),
    (3, 1, 0.2, 1),
    (3, 2, 6.0, 0),
    (5, 0, 9.0, 0),
    (5, 1, 0.2, 1),
    (5, 2, 0.3, 1),
]


def write(path, gz: bool = False):
    text = HEADER + "".join(f"{e},0,{f},{n / 4},{n},1.0,0.5,{x},{x},4\n" for e, f, n, x in ROWS)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_gained_and_lost_per_validation(tmp_path, gz):
    path = write(tmp_path / ("e.csv.gz" if gz else "e.csv"), gz)
    rows = churn(read_evals(path))
    assert [r["epoch"] for r in rows] == [1, 3, 5]
    assert [round(r["hallucination"], 3) for r in rows] == [0.667, 0.333, 0.333]
    assert [(r["gained"], r["lost"]) for r in rows] == [(0, 0), (1, 0), (1, 1)]
    assert [r["nll_sum_median"] for r in rows] == [5.0, 0.2, 0.3]


def test_report_and_csv_never_overwritten(tmp_path, capsys):
    path, out = write(tmp_path / "e.csv"), tmp_path / "churn.csv"
    main([str(path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "1 of 3 facts wrong, 1 of them recalled at an earlier validation" in printed
    assert out.read_text().splitlines()[0] == "epoch,hallucination,gained,lost,nll_sum_median,nll_sum_p90"
    with pytest.raises(UserError, match="exists"):
        main([str(path), "--out", str(out)])


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text("epoch,fact_id\n0,1\n")
    for arg, words in (
        (tmp_path / "none.csv", "does not exist"),
        (tmp_path / "bad.csv", "lacks the columns"),
    ):
        proc = subprocess.run([sys.executable, str(SCRIPT), str(arg)], capture_output=True, text=True)
        assert proc.returncode != 0 and words in proc.stderr and "Traceback" not in proc.stderr
