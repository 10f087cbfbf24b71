"""CLI options beyond the basics: head flags, prompt files, chat prompts, per-question scores.

Each run is checked against the Python API called with the same settings (the CLI must only pass
them through), or against a file the test writes itself.
"""

from __future__ import annotations

import csv
import json

import pytest
from decoding_oracles import PROMPTS
from test_mc import TFQA_CSV

from decoding.cli import main
from decoding.dera import DeRa
from decoding.dola import DoLa
from decoding.generate import generate
from decoding.greedy import Greedy
from decoding.mc import evaluate_truthfulqa
from decoding.presets import head_for_task
from decoding.sled import SLED

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _gen(capsys, model_dir, *extra):
    main(["generate", "--model", model_dir, "--max_new_tokens", "6", "--json", *extra])
    out = json.loads(capsys.readouterr().out)
    return out if isinstance(out, list) else [out]


def _ids(rows):
    return [r["token_ids"] for r in rows]


@pytest.mark.parametrize(
    "flags, head, kw",
    [
        (["--head", "sled", "--sled_layers", "1,3"], lambda: SLED(layers=[1, 3]), {}),
        (["--head", "sled", "--final_norm"], lambda: SLED(), {"final_norm": True}),
        (
            ["--head", "dola", "--dola_layers", "0,1,2,3", "--batch_mean"],
            lambda: DoLa([0, 1, 2, 3], batch_mean=True),
            {},
        ),
    ],
)
def test_head_flags_reach_the_head(flags, head, kw, sharp_llama_dir, llama, capsys):
    model, tok = llama
    rows = _gen(capsys, sharp_llama_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], *flags)
    assert _ids(rows) == generate(model, tok, PROMPTS[:2], head=head(), max_new_tokens=6, **kw).token_ids
    plain = _gen(capsys, sharp_llama_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], *flags[:2])
    assert _ids(rows) != _ids(plain)  # the flag changes these tokens, so the test can fail


def test_penalty_before_mix(sharp_llama_dir, sharp_llama2_dir, llama, llama2, capsys):
    model, tok = llama
    flags = ["--head", "dera", "--lam", "2", "--ref_model", sharp_llama2_dir, "--repetition_penalty", "1.5"]
    before = _gen(capsys, sharp_llama_dir, "--prompt", PROMPTS[0], *flags, "--penalty_before_mix")
    after = _gen(capsys, sharp_llama_dir, "--prompt", PROMPTS[0], *flags)
    kw = dict(head=DeRa(2.0), ref_model=llama2, repetition_penalty=1.5, max_new_tokens=6)
    assert _ids(before) == generate(model, tok, PROMPTS[0], penalty_before_mix=True, **kw).token_ids
    assert _ids(after) == generate(model, tok, PROMPTS[0], **kw).token_ids


def test_prompt_file_is_batched(sharp_llama_dir, llama, tmp_path, capsys):
    model, tok = llama
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(PROMPTS[:3]) + "\n\n")  # trailing blank lines are ignored
    rows = _gen(capsys, sharp_llama_dir, "--prompt_file", str(file), "--batch_size", "2", "--head", "sled")
    assert _ids(rows) == generate(model, tok, PROMPTS[:3], head=SLED(), max_new_tokens=6).token_ids


def test_sampling_seed_gives_one_stream_over_batches(sharp_llama_dir, tmp_path, capsys):
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join([PROMPTS[1]] * 4))
    flags = ["--prompt_file", str(file), "--do_sample", "--temperature", "2", "--seed", "3"]
    a = _gen(capsys, sharp_llama_dir, *flags, "--batch_size", "1")
    assert a == _gen(capsys, sharp_llama_dir, *flags, "--batch_size", "1")  # seeded: repeatable
    assert len({str(r["token_ids"]) for r in a}) > 1  # the batches do not restart the stream


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, sharp_llama_dir) -> str:
    """``sharp_llama_dir`` with a simple chat template on its tokenizer."""
    import shutil

    from decoding.models import load_tokenizer

    out = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(sharp_llama_dir, out)
    tok = load_tokenizer(str(out))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return str(out)


def test_chat_applies_the_template(chat_model_dir, llama, capsys):
    model, tok = llama
    rows = _gen(capsys, chat_model_dir, "--chat", "--prompt", "who wrote", "--prompt", "the code")
    rendered = ["<user>who wrote\n<assistant>", "<user>the code\n<assistant>"]  # the template by hand
    expect = generate(model, tok, rendered, max_new_tokens=6, add_special_tokens=False)
    assert _ids(rows) == expect.token_ids


def test_dola_json_head_shows_settings_only(sharp_llama_dir, tmp_path, capsys):
    data = tmp_path / "tfqa.csv"
    data.write_text(TFQA_CSV)
    main(
        ["score", "--model", sharp_llama_dir, "--head", "dola", "--task", "truthfulqa-mc"]
        + ["--data", str(data), "--json"]
    )
    head = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["head"]
    assert head == "DoLa(dola_layers='high', relative_top=0.0, batch_mean=False, post_softmax=None)"
    used = DoLa([0, 1])
    used(__import__("torch").randn(5, 2, 7))
    assert repr(used) == repr(DoLa([0, 1]))  # a call leaves no state in the repr


def test_per_item_csv_and_final_norm(sharp_llama_dir, llama, tmp_path, capsys):
    model, tok = llama
    data = tmp_path / "tfqa.csv"
    data.write_text(TFQA_CSV)
    out = tmp_path / "items.csv"
    argv = [
        "score",
        "--model",
        sharp_llama_dir,
        "--head",
        "sled",
        "--task",
        "truthfulqa-mc",
        "--data",
        str(data),
    ]
    main([*argv, "--json", "--final_norm", "--per_item", str(out)])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from decoding.mc_datasets import load_truthfulqa

    per_item: list[dict] = []
    head = head_for_task("sled", "truthfulqa-mc")
    expect = evaluate_truthfulqa(
        model, tok, load_truthfulqa(data), head, progress=False, per_item=per_item, final_norm=True
    )
    assert {k: metrics[k] for k in expect} == expect
    unnormed: list[dict] = []
    evaluate_truthfulqa(model, tok, load_truthfulqa(data), head, progress=False, per_item=unnormed)
    assert per_item != unnormed  # --final_norm changes these scores, so the test can fail
    rows = list(csv.DictReader(out.open()))
    assert [r["question"] for r in rows] == ["What is the code?", "Who wrote?"]
    assert [float(r["MC2"]) for r in rows] == pytest.approx([p["MC2"] for p in per_item])
    assert sum(float(r["MC1"]) for r in rows) / 2 == pytest.approx(metrics["MC1"])
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left
    out.write_text("old")
    main([*argv, "--per_item", str(out), "--overwrite"])
    capsys.readouterr()
    assert out.read_text().startswith("index,question,MC1,MC2,MC3,mc2_nan,best,max_false\n")


def test_factor_per_item_and_generation_layout(sharp_llama_dir, tmp_path, capsys):
    fac = tmp_path / "news_factor.csv"
    fac.write_text(
        "full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nThe code is,42,7,8,9\n"
    )
    out = tmp_path / "factor.csv"
    main(
        ["score", "--model", sharp_llama_dir, "--task", "factor", "--data", str(fac), "--per_item", str(out)]
    )
    capsys.readouterr()
    (row,) = csv.DictReader(out.open())
    assert row["completion"] == "42" and row["correct"] == str(
        int(float(row["true"]) >= float(row["max_false"]))
    )
    # HF's truthful_qa/generation layout (list answers) scores like the CSV
    gen = tmp_path / "gen.json"
    record = {"question": "Who wrote?", "best_answer": "nobody", "correct_answers": ["nobody"]}
    gen.write_text(json.dumps([{**record, "incorrect_answers": ["the author"]}]))
    main(["score", "--model", sharp_llama_dir, "--task", "truthfulqa-mc", "--data", str(gen), "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 1


def test_greedy_default_unchanged(sharp_llama_dir, llama, capsys):
    model, tok = llama
    rows = _gen(capsys, sharp_llama_dir, "--prompt", PROMPTS[0])
    assert _ids(rows) == generate(model, tok, PROMPTS[0], head=Greedy(), max_new_tokens=6).token_ids


@pytest.mark.slow
def test_chat_on_smollm2_equals_hf_chat_template(monkeypatch, capsys):
    """``--chat`` on SmolLM2-Instruct gives HF's greedy tokens on ``apply_chat_template``'s ids."""
    import os
    from pathlib import Path

    from decoding.errors import UserError
    from decoding.models import load_causal_lm, load_tokenizer

    cache = os.environ.get("MEMEXP_REAL_CACHE", str(Path.home() / ".cache" / "memexp"))
    monkeypatch.setenv("MEMEXP_CACHE", cache)
    try:
        model = load_causal_lm("smollm2:135m-instruct").eval()
    except UserError as err:
        pytest.skip(str(err))
    tok = load_tokenizer("smollm2:135m-instruct")
    question = "What is the capital of France?"
    rows = _gen(capsys, "smollm2:135m-instruct", "--chat", "--prompt", question)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    hf = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert _ids(rows) == [hf[0, enc["input_ids"].shape[1] :].tolist()]
    assert "Paris" in rows[0]["text"]
