"""CLI: ``decoding generate --json`` returns the API's tokens; ``score`` prints metrics; clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from cli_checks import assert_refused_in_one_line
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


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory) -> str:
    """A tiny Llama whose BPE tokenizer was trained with another seed (another vocabulary)."""
    from decoding.tiny import build_tiny_lm

    return str(build_tiny_lm(tmp_path_factory.mktemp("other") / "llama", arch="llama", layers=4, seed=1))


@pytest.fixture(scope="module")
def truncated_dir(tmp_path_factory, sharp_llama_dir) -> str:
    """A copy of ``sharp_llama_dir`` whose model.safetensors is cut after 20 kB (an interrupted download)."""
    out = tmp_path_factory.mktemp("truncated") / "model"
    shutil.copytree(sharp_llama_dir, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20_000])
    return str(out)


GEN = ["generate", "--model", "{model}", "--prompt", "Q:", "--max_new_tokens", "2"]
SCORE = ["score", "--model", "{model}", "--task", "truthfulqa-mc", "--data", "{data}"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*GEN, "--dtype", "float99"], "invalid choice: 'float99'"),
        ([*SCORE, "--limit", "0"], "--limit: 0 must be >= 1"),
        ([*SCORE, "--limit", "-1"], "--limit: -1 must be >= 1"),
        (
            [*GEN, "--head", "sled", "--evolution_rate", "nan"],
            "--evolution_rate: 'nan' is not a finite number",
        ),
        (["generate", "--model", "{model}", "--prompt", "Q:", "--max_new_tokens", "-1"], "-1 must be >= 1"),
        ([*GEN, "--top_k", "-5"], "--top_k: -5 must be >= 0"),
        ([*GEN, "--top_p", "2"], "--top_p: 2 must be in (0, 1]"),
        ([*GEN, "--temperature", "0"], "--temperature: 0 must be > 0"),
        ([*GEN, "--head", "dera", "--lam", "-1", "--ref_model", "{model}"], "--lam: -1 must be >= 0"),
        ([*SCORE, "--head", "dera", "--ref_model", "{other}"], "has another tokenizer"),
        ([*GEN, "--head", "dera", "--ref_model", "{other}"], "has another tokenizer"),
        (["generate", "--model", "{truncated}", "--prompt", "Q:"], "model.safetensors file is incomplete"),
        (
            ["generate", "--model", "/nonexistent/model", "--prompt", "Q:"],
            "'/nonexistent/model' does not exist",
        ),
        ([*GEN, "--head", "beam"], "unknown head 'beam'; known heads: greedy, dola, sled, dera"),
        ([*GEN, "--head", "dola:dola_layers=99"], "dola_layers [99] are out of range"),
        ([*GEN, "--head", "dola", "--dola_layers", "0,9"], "dola_layers [9] are out of range"),
        ([*GEN, "--head", "dera:lam=abc", "--ref_model", "{model}"], "lam='abc' in 'dera:lam=abc'"),
        ([*GEN, "--head", "dera:head=dera", "--ref_model", "{model}"], "head='dera'"),
        ([*GEN, "--head", "sled:evolution_scale=100000"], "evolution_scale=100000 exceeds the vocabulary"),
        (
            [*GEN, "--head", "sled", "--evolution_scale", "100000"],
            "evolution_scale=100000 exceeds the vocabulary",
        ),
        ([*GEN, "--head", "greedy", "--lam", "2"], "--lam 2.0 applies to the dera head"),
        ([*GEN, "--head", "dera"], "needs --ref_model"),
        ([*GEN, "--head", "dera", "--ref_model", "adapters-off"], "needs a peft adapter folder"),
        ([*SCORE[:-1], "{tmp}/missing.csv"], "missing.csv' is not a file"),
        ([*SCORE[:4], "factor", *SCORE[5:]], "is not a factor file"),
        (["tiny", "{model}"], "is not an empty folder"),
        (["tiny", "{tmp}/t", "--hidden", "30"], "--hidden 30 must be a multiple of 4"),
        (["generate", "--model", "{model}"], "--prompt"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv, message, sharp_llama_dir, other_tokenizer_dir, truncated_dir, tmp_path, monkeypatch, capsys
):
    data = tmp_path / "tfqa.csv"
    data.write_text(TFQA_CSV)
    monkeypatch.chdir(tmp_path)
    values = dict(
        model=sharp_llama_dir, other=other_tokenizer_dir, truncated=truncated_dir, data=data, tmp=tmp_path
    )
    assert_refused_in_one_line([a.format(**values) for a in argv], message, tmp_path, capsys)


def test_help_is_fast_and_imports_neither_torch_nor_transformers():
    code = "import sys, decoding.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "decoding.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 3.0


def test_head_option_string_on_the_command_line(sharp_llama_dir, capsys):
    base = ["generate", "--model", sharp_llama_dir, "--prompt", "Q:", "--max_new_tokens", "4", "--json"]
    main([*base, "--head", "dola:dola_layers=0,2,relative_top=0"])
    spec = json.loads(capsys.readouterr().out)
    main([*base, "--head", "dola", "--dola_layers", "0,2", "--relative_top", "0"])
    assert spec == json.loads(capsys.readouterr().out)
    main([*base, "--head", "dera:lam=1,head=sled", "--ref_model", sharp_llama_dir])
    dera = json.loads(capsys.readouterr().out)
    main([*base, "--head", "sled"])
    assert dera == json.loads(capsys.readouterr().out)  # lam = 1 is the aligned model
