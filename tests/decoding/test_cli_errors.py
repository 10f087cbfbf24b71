"""CLI bad input (the options of tests/decoding/test_cli_options.py): one line, exit != 0, nothing written.

Each case is a row of docs/troubleshooting.md's decoding table.
"""

from __future__ import annotations

import pytest
from cli_checks import assert_refused_in_one_line
from test_mc import TFQA_CSV

GEN = ["generate", "--model", "{model}", "--max_new_tokens", "2"]
ONE = [*GEN, "--prompt", "Q:"]
SCORE = ["score", "--model", "{model}", "--task", "truthfulqa-mc", "--data", "{data}"]


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory, sharp_llama2_dir) -> str:
    """The reference of DeRa with the aligned model's tokenizer but 8 output rows fewer than its ids."""
    from decoding.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(sharp_llama2_dir)
    model = load_causal_lm(sharp_llama2_dir)
    model.resize_token_embeddings(len(tok) - 8)
    out = tmp_path_factory.mktemp("small") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*ONE, "--head", "sled", "--sled_layers", "0,9"], "does not fit model"),
        (
            [*ONE, "--head", "sled", "--sled_layers", "a,b"],
            "--sled_layers: 'a,b': use comma-separated layer ids",
        ),
        ([*ONE, "--head", "sled", "--batch_mean"], "--batch_mean applies to the dola head, not 'sled'"),
        ([*ONE, "--sled_layers", "0,2"], "--sled_layers 0,2 applies to the sled head, not 'greedy'"),
        ([*ONE, "--final_norm"], "--final_norm applies to heads that read early layers"),
        ([*ONE, "--head", "sled", "--penalty_before_mix"], "--penalty_before_mix applies to the dera head"),
        (
            [*ONE, "--head", "dera", "--ref_model", "{model}", "--penalty_before_mix"],
            "it needs --repetition_penalty other than 1.0",
        ),
        ([*GEN, "--prompt_file", "{tmp}/missing.txt"], "missing.txt' is not a file"),
        ([*GEN, "--prompt_file", "{empty}"], "holds no prompts"),
        ([*GEN, "--prompt_file", "{blank}"], "line 2 is empty"),
        ([*GEN, "--prompt_file", "{latin1}"], "is not UTF-8"),
        ([*ONE, "--prompt_file", "{blank}"], "not allowed with argument --prompt"),
        ([*ONE, "--batch_size", "0"], "--batch_size: 0 must be >= 1"),
        ([*ONE, "--chat"], "has no chat template; drop --chat"),
        ([*SCORE, "--per_item", "{existing}"], "exists; pass --overwrite to replace it"),
        ([*SCORE, "--per_item", "{tmp}/no/dir.csv"], "does not exist; create it first"),
        ([*SCORE, "--per_item", "{tmp}"], "is a folder"),
        ([*SCORE, "--overwrite"], "--overwrite replaces an existing --per_item file"),
        ([*SCORE, "--head", "dera", "--ref_model", "{small}"], "output rows for"),
        ([*ONE, "--head", "dera", "--ref_model", "{small}"], "output rows for"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv, message, sharp_llama_dir, small_vocab_dir, tmp_path, monkeypatch, capsys
):
    files = {
        "data": ("tfqa.csv", TFQA_CSV.encode()),
        "empty": ("empty.txt", b"\n\n"),
        "blank": ("blank.txt", b"Q: one\n\nQ: three\n"),
        "latin1": ("latin1.txt", "Q: caf\u00e9\n".encode("latin-1")),
        "existing": ("items.csv", b"keep me\n"),
    }
    values = dict(model=sharp_llama_dir, small=small_vocab_dir, tmp=tmp_path)
    for key, (name, content) in files.items():
        (tmp_path / name).write_bytes(content)
        values[key] = tmp_path / name
    monkeypatch.chdir(tmp_path)
    assert_refused_in_one_line([a.format(**values) for a in argv], message, tmp_path, capsys)
