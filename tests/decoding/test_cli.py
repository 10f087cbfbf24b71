"""CLI: ``decoding generate --json`` returns the API's tokens; ``score`` prints metrics; clear errors."""

from __future__ import annotations

import json

import pytest
from test_mc import TFQA_CSV

from decoding.cli import main
from decoding.generate import generate
from decoding.sled import SLED


def test_generate_json_matches_api(sharp_llama_dir, llama, capsys):
    model, tok = llama
    main(
        [
            "generate",
            "--model",
            sharp_llama_dir,
            "--head",
            "sled",
            "--prompt",
            "Q: who wrote",
            "--max_new_tokens",
            "6",
            "--evolution_rate",
            "5",
            "--evolution_scale",
            "20",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    expect = generate(
        model, tok, "Q: who wrote", head=SLED(evolution_rate=5, evolution_scale=20), max_new_tokens=6
    )
    assert out == {"token_ids": expect.token_ids[0], "text": expect.texts[0]}


def test_generate_dera_and_dola(sharp_llama_dir, sharp_llama2_dir, capsys):
    main(
        [
            "generate",
            "--model",
            sharp_llama_dir,
            "--head",
            "dera",
            "--ref_model",
            sharp_llama2_dir,
            "--lam",
            "0",
            "--prompt",
            "Q:",
            "--max_new_tokens",
            "5",
            "--json",
        ]
    )
    dera = json.loads(capsys.readouterr().out)
    main(
        [
            "generate",
            "--model",
            sharp_llama2_dir,
            "--head",
            "greedy",
            "--prompt",
            "Q:",
            "--max_new_tokens",
            "5",
            "--json",
        ]
    )
    assert dera == json.loads(capsys.readouterr().out)
    main(
        [
            "generate",
            "--model",
            sharp_llama_dir,
            "--head",
            "dola",
            "--dola_layers",
            "0,2",
            "--prompt",
            "Q:",
            "--prompt",
            "A:",
            "--max_new_tokens",
            "4",
            "--json",
        ]
    )
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_score_prints_metrics(sharp_llama_dir, tmp_path, capsys):
    data = tmp_path / "tfqa.csv"
    data.write_text(TFQA_CSV)
    main(
        [
            "score",
            "--model",
            sharp_llama_dir,
            "--head",
            "sled",
            "--task",
            "truthfulqa-mc",
            "--data",
            str(data),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 2 and {"MC1", "MC2", "MC3", "mc2_nan"} <= set(out)
    assert "evolution_scale=50" in out["head"] and "op_T=10" in out["head"]  # the task's defaults


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--head", "beam"], "unknown head 'beam'; known heads: greedy, dola, sled, dera"),
        (["--head", "sled", "--evolution_scale", "100000"], "evolution_scale=100000 exceeds the vocabulary"),
        (["--head", "dola", "--dola_layers", "0,9"], "dola_layers [9] are out of range"),
        (["--head", "dera", "--lam", "-1", "--ref_model", "tiny:llama"], "lam=-1.0 must be >= 0"),
        (["--head", "dera"], "needs --ref_model"),
    ],
)
def test_cli_errors(sharp_llama_dir, argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["generate", "--model", sharp_llama_dir, "--prompt", "Q:", "--max_new_tokens", "2", *argv])
    assert message in str(err.value) + capsys.readouterr().err
