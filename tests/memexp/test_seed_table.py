"""The real-backbone table over seeds (benchmarks/seed_table.py): aggregation, verdicts and refusals."""

from __future__ import annotations

import json
import statistics

import pytest
from scipy import stats
from test_real_backbone_table import row, stage

from benchmarks.seed_table import main
from decoding.errors import UserError

# per seed: (MoME seconds to 0%, LoRA seconds to 0%, MoME gate-off real-text ratio)
SEEDS = {0: (40.0, 100.0, 1.30), 1: (60.0, 100.0, 1.50), 2: (50.0, 125.0, 1.40)}


def write_seed(folder, seed: int, mome_s: float, lora_s: float, ratio: float, lr: float = 1e-3) -> None:
    folder.mkdir(parents=True)
    files = {
        "mome": stage({"mome_gate_off": row(0.0, ratio, 0.0), "mome_gate_on": row(0.0, 1.0, 1.0)}, mome_s),
        "lora": stage({"lora": row(0.0, 1.2, 0.0)}, lora_s),
    }
    for method, data in files.items():
        data["stage_settings"] = {"seed": seed, "stage": method, "lr": lr}
        (folder / f"{method}.json").write_text(json.dumps(data))


def test_means_intervals_and_verdicts_over_three_seeds(tmp_path, capsys):
    for seed, values in SEEDS.items():
        write_seed(tmp_path / f"s{seed}", seed, *values)
    table = main(["--out", str(tmp_path / "out"), *(str(tmp_path / f"s{s}") for s in SEEDS)])
    ratios = [m / lo for m, lo, _ in SEEDS.values()]  # the oracle: Student-t by hand
    half = stats.t.ppf(0.975, 2) * statistics.stdev(ratios) / 3**0.5
    off = table["rows"]["mome_gate_off"]
    assert off["n_seeds"] == 3 and off["time_vs_lora"] == pytest.approx(statistics.mean(ratios))
    assert (off["time_vs_lora_lo"], off["time_vs_lora_hi"]) == pytest.approx(
        (statistics.mean(ratios) - half, statistics.mean(ratios) + half)
    )
    assert off["verdicts"]["time"] == "inconclusive"  # 0.47 [0.34, 0.59]: the interval holds 0.5
    assert (
        off["verdicts"]["real_text_nll"] == "not supported" and off["verdicts"]["exact_recall"] == "supported"
    )
    on = table["rows"]["mome_gate_on"]
    assert all(on["verdicts"][k] == "supported" for k in ("real_text_nll", "mc1", "mc2", "identical_answers"))
    assert table["rows"]["lora"]["verdicts"]["time"] is None  # the reference
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| seeds at 0% hallucination | 3/3 | 3/3 | 3/3 |" in md and "Seeds: 0, 1, 2." in md
    assert json.loads((tmp_path / "out" / "seeds.json").read_text()) == table
    capsys.readouterr()


def test_a_seed_that_never_reached_zero_is_counted_not_averaged(tmp_path, capsys):
    write_seed(tmp_path / "s0", 0, 40.0, 100.0, 1.3)
    write_seed(tmp_path / "s1", 1, None, 100.0, 1.3)
    table = main(["--out", str(tmp_path / "out"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    assert table["rows"]["mome_gate_off"]["time_vs_lora_n"] == 1
    assert "(1 of 2)" in (tmp_path / "out" / "seeds.md").read_text()
    capsys.readouterr()


def test_folders_of_other_settings_or_the_same_seed_are_refused(tmp_path):
    write_seed(tmp_path / "a", 0, 40.0, 100.0, 1.3)
    write_seed(tmp_path / "b", 0, 40.0, 100.0, 1.3)
    write_seed(tmp_path / "c", 1, 40.0, 100.0, 1.3, lr=3e-3)
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "out")]
    with pytest.raises(UserError, match="seed 0 appears twice"):
        main([*out, str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(UserError, match="other methods or settings"):
        main([*out, str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(UserError, match="holds no mome.json"):
        main([*out, str(tmp_path / "empty")])
    assert not (tmp_path / "out").exists()
