"""Every shipped memexp config parses, and a MoME config with ``balance_keys`` has room for its facts."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from memexp.cli import main
from memexp.mome.expert_balance import warn_if_shared

CFG = Path(__file__).resolve().parents[2] / "configs" / "memexp"


def _print_config(capsys, config: Path) -> dict:
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(config), "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(p.name for p in CFG.glob("*.yaml")))
def test_every_memexp_config_parses(capsys, name):
    cfg = _print_config(capsys, CFG / name)
    assert cfg["model"]["class_path"].startswith("memexp.")
    assert cfg["data"]["init_args"]["num_random_facts"] > 0


@pytest.mark.parametrize("name", sorted(p.name for p in CFG.glob("mome_*.yaml")))
def test_balanced_mome_configs_give_every_fact_experts_of_its_own(name):
    """With ``balance_keys`` a fact owns k experts only while facts x k <= experts; else they share."""
    cfg = yaml.safe_load((CFG / name).read_text())
    init = cfg["model"]["init_args"]
    if not init.get("balance_keys"):
        pytest.skip("router's own top-k")
    facts, mome = cfg["data"]["init_args"]["num_random_facts"], init["mome"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fit's own check: no slot shared
        warn_if_shared(facts * mome.get("heads", 1), mome["k"], mome["num_experts"])
