"""CLI: --help, --print_config of every shipped config (docs/algorithms/l2p.md presets), an end-to-end fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prompt_pool.cli import main

CFG = Path(__file__).resolve().parents[2] / "configs" / "prompt_pool"


def _print_config(capsys, *configs: str) -> dict:
    args = ["fit"]
    for c in configs:
        args += ["--config", str(CFG / c)]
    with pytest.raises(SystemExit) as e:
        main([*args, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_fast_help_names_every_option_and_subcommand_of_the_real_parser(capsys):
    """``prompt-pool --help`` is written by hand (no torch import); it must not drift from LightningCLI's."""
    from prompt_pool.lightning_cli import cli

    with pytest.raises(SystemExit):
        main(["--help"])
    fast = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["--help"])
    real = capsys.readouterr().out
    options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", real.split("subcommands:")[0]))
    assert options >= {"-h", "--help", "-c", "--config", "--print_config"}
    assert {o for o in options if o not in fast} == set()
    assert re.search(r"\{fit\}", real) and "{fit}" in fast
    assert "--runner.resume true" in fast and "--runner.overwrite true" in fast


@pytest.mark.parametrize(
    "configs,expect",
    [
        # paper [P]: 10/5/5, lambda 0.5, batch 128 -> lr_eff 0.015
        (
            ["split_cifar100.yaml"],
            dict(
                pool_size=10,
                prompt_length=5,
                top_n=5,
                pull_coef=0.5,
                batch=128,
                lr_eff=0.015,
                prompt_init="uniform_small",
            ),
        ),
        # official JAX [J]: Lp 10, N 4, lambda 1.0
        (
            ["split_cifar100.yaml", "split_cifar100_official_jax.yaml"],
            dict(pool_size=10, prompt_length=10, top_n=4, pull_coef=1.0, batch=128, lr_eff=0.015),
        ),
        # l2p-pytorch [T]: 10/5/5, lambda 0.1, U[-1, 1], batch 16 -> 0.001875
        (
            ["split_cifar100.yaml", "split_cifar100_l2p_pytorch.yaml"],
            dict(
                pool_size=10,
                prompt_length=5,
                top_n=5,
                pull_coef=0.1,
                batch=16,
                lr_eff=0.001875,
                prompt_init="uniform",
            ),
        ),
        # paper 5-datasets: 20/5/4, lambda 0.5, eq. 4 diversity
        (
            ["five_datasets.yaml"],
            dict(
                pool_size=20, prompt_length=5, top_n=4, pull_coef=0.5, diversity=True, use_prompt_mask=False
            ),
        ),
        (
            ["five_datasets.yaml", "five_datasets_official_jax.yaml"],
            dict(
                pool_size=20,
                prompt_length=10,
                top_n=4,
                diversity=False,
                use_prompt_mask=True,
                shared_prompt_pool=True,
            ),
        ),
        (
            ["five_datasets.yaml", "five_datasets_l2p_pytorch.yaml"],
            dict(prompt_length=10, use_prompt_mask=True, prompt_init="uniform", batch=16, lr_eff=0.001875),
        ),
    ],
)
def test_presets_reproduce_the_spec_columns(capsys, configs, expect):
    cfg = _print_config(capsys, *configs)
    init = cfg["model"]["init_args"]
    for k, v in expect.items():
        if k == "batch":
            assert cfg["data"]["loader"]["batch_size"] == v
        elif k == "lr_eff":
            assert init["lr"] * cfg["data"]["loader"]["batch_size"] / init[
                "lr_reference_batch"
            ] == pytest.approx(v)
        else:
            assert init["pool"].get(k, init.get(k)) == v, k  # the pool's settings are in init_args.pool
    assert cfg["trainer"]["max_epochs"] == 5 and cfg["trainer"]["gradient_clip_val"] == 1.0


@pytest.mark.parametrize("baseline", sorted(p.name for p in (CFG / "baselines").glob("*.yaml")))
def test_every_baseline_config_parses_on_top_of_split_digits(capsys, baseline):
    cfg = _print_config(capsys, "split_digits.yaml", f"baselines/{baseline}")
    assert cfg["model"]["class_path"].startswith("prompt_pool.baselines.")
    assert cfg["model"]["init_args"]["checkpoint"] == "tiny:digits"


def test_fit_runs_a_whole_sequence_from_the_cli(tmp_path, capsys, base_args):
    out = tmp_path / "run"
    main(base_args(out))
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    saved = json.loads((out / "results.json").read_text())
    assert metrics["average_accuracy"] == pytest.approx(saved["metrics"]["average_accuracy"])
    assert len(saved["accuracy_matrix"]) == 2 and (out / "accuracy_matrix.png").exists()


@pytest.mark.slow
def test_shipped_split_digits_config_end_to_end(tmp_path, capsys):
    """The real thing: pretrains the tiny digits ViT (cached), then L2P over the 5 tasks (~1 min)."""
    main(
        [
            "fit",
            "--config",
            str(CFG / "split_digits.yaml"),
            "--trainer.logger",
            "false",
            "--runner.out_dir",
            str(tmp_path / "run"),
        ]
    )
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"]["average_accuracy"] > 60


def test_an_addon_joins_the_l2p_config_from_the_command_line(tmp_path, capsys, base_args):
    """L2P-R: the Replay add-on appended to the L2P config's (empty) callbacks; recorded as a setting."""
    out = tmp_path / "run"
    main(
        base_args(out)
        + ["--trainer.callbacks+=prompt_pool.addons.Replay", "--trainer.callbacks.per_class", "2"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["usage"] is not None and len(saved["accuracy_matrix"]) == 2
    recorded = json.loads((out / "run_config.json").read_text())
    assert any("prompt_pool.addons.Replay" in json.dumps(v) for k, v in recorded.items() if "callbacks" in k)
