"""The ``memexp-decoding`` lm-eval model against the project's scorer, HF's own logits and lm-eval itself."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from decoding.dola import DoLa  # noqa: E402
from decoding.errors import UserError  # noqa: E402
from decoding.generate import generate  # noqa: E402
from decoding.greedy import Greedy  # noqa: E402
from decoding.lm_eval_cli import with_task_path  # noqa: E402
from decoding.lm_eval_model import DecodingLM, build_head  # noqa: E402
from decoding.lm_eval_tasks import TASKS_DIR  # noqa: E402
from decoding.mc import score_continuations  # noqa: E402
from decoding.presets import head_for_task  # noqa: E402
from decoding.sled import SLED  # noqa: E402

CONTEXTS = ["Q: What is the code of the city?\nA:", "Q: who wrote"]
CHOICES = [" 42 is the number.", " I have no comment.", " the river"]


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def lm_sled(sharp_llama_dir):
    return DecodingLM(pretrained=sharp_llama_dir, head="sled", preset="truthfulqa-mc")


@pytest.fixture(scope="module")
def lm_greedy(sharp_llama_dir):
    return DecodingLM(pretrained=sharp_llama_dir, head="greedy", max_length=12, batch_size=2)


def test_the_model_is_registered():
    assert get_model("memexp-decoding") is DecodingLM


def test_loglikelihood_equals_the_project_scorer(lm_sled):
    """Requests of two contexts, interleaved, give score_continuations' scores of each context's choices."""
    args = [(c, a) for a in CHOICES for c in CONTEXTS]
    out = lm_sled.loglikelihood(_requests("loglikelihood", args), disable_tqdm=True)
    head = head_for_task("sled", "truthfulqa-mc")
    assert lm_sled.post_softmax is False  # the preset's raw scores
    for context in CONTEXTS:
        want = score_continuations(lm_sled.model, lm_sled.tokenizer, context, CHOICES, head).tolist()
        got = [out[i][0] for i, (c, _) in enumerate(args) if c == context]
        assert got == want


def test_greedy_loglikelihood_and_is_greedy_against_hf_logits(lm_greedy):
    """Greedy head, log-probabilities: the sum of HF's log_softmax at the continuation tokens; is_greedy
    from HF's argmax. The model's own greedy continuation must come out is_greedy=True."""
    model, tok = lm_greedy.model, lm_greedy.tokenizer
    lm_greedy.max_length = 4096
    context = CONTEXTS[0]
    ids = tok(context, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :]
    own = tok.decode(gen)
    conts = [c for c in [*CHOICES, own] if tok(context + c).input_ids[: ids.shape[1]] == ids[0].tolist()]
    assert own in conts
    out = lm_greedy.loglikelihood(_requests("loglikelihood", [(context, c) for c in conts]), True)
    for cont, (ll, greedy) in zip(conts, out):
        full = tok(context + cont, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = model(full).logits[0, :-1].float().log_softmax(-1)  # (S - 1, V)
        pos = torch.arange(ids.shape[1] - 1, full.shape[1] - 1)
        target = full[0, pos + 1]
        assert ll == pytest.approx(float(logp[pos, target].sum()), abs=1e-4)
        assert greedy == bool((logp[pos].argmax(-1) == target).all())
    assert out[conts.index(own)][1] is True


def test_empty_context_and_trailing_space(lm_greedy):
    """An empty context scores after the BOS token; a context's trailing space moves to the continuation."""
    lm_greedy.max_length = 4096
    tok = lm_greedy.tokenizer
    (ll_empty, _), (ll_space, _), (ll_plain, _) = lm_greedy.loglikelihood(
        _requests(
            "loglikelihood",
            [("", "the river"), ("Q: who wrote ", "the river"), ("Q: who wrote", " the river")],
        ),
        True,
    )
    ids = [tok.bos_token_id] + tok("the river", add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = lm_greedy.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    assert ll_empty == pytest.approx(float(logp[torch.arange(len(ids) - 1), ids[1:]].sum()), abs=1e-4)
    assert ll_space == ll_plain


def test_rolling_loglikelihood_against_hf(lm_greedy):
    """One window: the text's HF log-probability after BOS; windows of 12 tokens: lm-eval's disjoint windows
    each scored by HF."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    model, tok = lm_greedy.model, lm_greedy.tokenizer
    text = "Q: What is the code of the city? A: 42 is the number of the river"
    tokens = tok(text, add_special_tokens=False).input_ids
    assert len(tokens) > 24

    def hf(ids: list[int], n_ctx: int) -> float:
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        pos = torch.arange(n_ctx - 1, len(ids) - 1)
        return float(logp[pos, torch.tensor(ids)[pos + 1]].sum())

    lm_greedy.max_length = 12
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, tok.bos_token_id, 12, 1)]
    (windowed,) = lm_greedy.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]), True)
    assert windowed == pytest.approx(sum(hf(c + p, len(c)) for c, p in windows), abs=1e-3)
    lm_greedy.max_length = 4096
    (whole,) = lm_greedy.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]), True)
    assert whole == pytest.approx(hf([tok.bos_token_id, *tokens], 1), abs=1e-3)
    assert whole != pytest.approx(windowed, abs=1e-3)


def test_rolling_is_refused_for_raw_scores(lm_sled):
    with pytest.raises(UserError, match="post_softmax=false"):
        lm_sled.loglikelihood_rolling(_requests("loglikelihood_rolling", [("some text",)]), True)


def test_generate_until_equals_decoding_generate(lm_sled):
    """Each request is decoding.generate's text with the head, cut at ``until``, ``max_gen_toks`` long."""
    prompts = ["Q: What is the code of the city", "Q: who wrote", "A: 42 is the number of"]
    plain = generate(lm_sled.model, lm_sled.tokenizer, prompts, head=lm_sled.head, max_new_tokens=6)
    stop = next(t[2:4] for t in plain.texts if len(t) >= 4)  # a string some row produces
    kw = [{"until": [stop], "max_gen_toks": 6}, {"until": stop, "max_gen_toks": 6, "temperature": 0.0}]
    args = [(p, kw[i % 2]) for i, p in enumerate(prompts)]
    out = lm_sled.generate_until(_requests("generate_until", args), True)
    want = generate(
        lm_sled.model, lm_sled.tokenizer, prompts, head=lm_sled.head, max_new_tokens=6, stop_strings=[stop]
    )
    assert out == want.texts
    assert any(stop in t for t in plain.texts) and not any(stop in t for t in out)
    with pytest.raises(UserError, match="num_beams"):
        lm_sled.generate_until(_requests("generate_until", [(prompts[0], {"num_beams": 4})]), True)


def test_head_option_strings_and_presets():
    dola = build_head("dola:dola_layers=0;2;relative_top=0")
    assert isinstance(dola, DoLa) and dola.dola_layers == (0, 2) and dola.relative_top == 0.0
    assert build_head("dola", "factor").dola_layers == "low"
    sled = build_head("sled:evolution_rate=0.5", "factor")
    assert isinstance(sled, SLED) and (sled.evolution_rate, sled.evolution_scale, sled.op_T) == (0.5, 10, 1)
    assert sled.evolution_lower_bound == -2500.0
    dera = build_head("dera:lam=2;head=sled", "truthfulqa-mc")
    assert dera.lam == 2.0 and isinstance(dera.head, SLED) and dera.head.evolution_scale == 50
    assert isinstance(build_head("greedy"), Greedy)
    with pytest.raises(UserError, match="preset='tfqa'"):
        build_head("sled", "tfqa")


def test_model_args_are_checked(sharp_llama_dir):
    with pytest.raises(UserError, match="heads"):
        DecodingLM(pretrained=sharp_llama_dir, heads="sled")
    with pytest.raises(UserError, match="pretrained=NAME"):
        DecodingLM(head="sled")
    with pytest.raises(UserError, match="ref_model"):
        DecodingLM(pretrained=sharp_llama_dir, head="dera:lam=2")
    with pytest.raises(UserError, match="post_softmax='maybe'"):
        DecodingLM(pretrained=sharp_llama_dir, post_softmax="maybe")
    lm = DecodingLM.create_from_arg_string(
        f"pretrained={sharp_llama_dir},head=dola:dola_layers=0;2,post_softmax=false",
        {"batch_size": "auto", "device": "cuda:0" if not torch.cuda.is_available() else "cpu"},
    )
    assert lm.head.dola_layers == (0, 2) and lm.post_softmax is False and lm.batch_size == 8
    assert lm.device.type == "cpu"


def test_dera_scores_with_its_reference(sharp_llama_dir, sharp_llama2_dir):
    lm = DecodingLM(pretrained=sharp_llama_dir, head="dera:lam=2", ref_model=sharp_llama2_dir)
    out = lm.loglikelihood(_requests("loglikelihood", [(CONTEXTS[0], c) for c in CHOICES]), True)
    want = score_continuations(
        lm.model, lm.tokenizer, CONTEXTS[0], CHOICES, lm.head, post_softmax=True, ref_model=lm.ref
    )
    assert [s for s, _ in out] == want.tolist()
    alone = DecodingLM(pretrained=sharp_llama_dir, head="greedy")
    assert [s for s, _ in out] != [
        s
        for s, _ in alone.loglikelihood(_requests("loglikelihood", [(CONTEXTS[0], c) for c in CHOICES]), True)
    ]


def test_task_folder_is_added_unless_given():
    assert with_task_path(["--model", "m"]) == ["--model", "m", "--include_path", str(TASKS_DIR)]
    assert with_task_path(["ls", "tasks", "--include_path=X"]) == ["ls", "tasks", "--include_path=X"]
    assert with_task_path([]) == [] and with_task_path(["-h"]) == ["-h"]
    assert {p.name for p in TASKS_DIR.glob("*.yaml")} == {
        "memexp_factual_mc.yaml",
        "memexp_factual_factor.yaml",
    }


def test_task_documents_follow_the_project_loaders():
    """Task rows: decoding.mc_datasets's items in evaluate_truthfulqa's answer order; metrics: mc_metrics'."""
    import importlib.util

    from decoding.mc import mc_metrics, truthfulqa_prompt
    from decoding.mc_datasets import load_factor, load_truthfulqa

    spec = importlib.util.spec_from_file_location("memexp_task_utils", TASKS_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    items = load_truthfulqa(utils.DATA_DIR / "factual_mc.csv")
    docs = utils.factual_mc(pretrained="ignored", version=1.0)["test"]
    assert len(docs) == len(items)
    doc, item = docs[5], items[5]
    assert doc["prompt"] == truthfulqa_prompt(item.question) and doc["answers"][0] == item.best
    assert [doc["answers"][i] for i in doc["true"]] == item.true
    assert [doc["answers"][i] for i in doc["false"]] == item.false
    lls = [(-float(i), False) for i in range(len(doc["answers"]))]
    m = mc_metrics([-float(i) for i in doc["true"]], [-float(i) for i in doc["false"]], 0.0)
    assert utils.process_mc(doc, lls) == {"mc1": m["MC1"], "mc2": m["MC2"], "mc3": m["MC3"], "mc2_nan": 0.0}
    factor = utils.factual_factor()["test"]
    first = load_factor(utils.DATA_DIR / "factual_factor.csv")[0]
    assert factor[0] == {"prefix": first.prefix, "choices": [first.completion, *first.contradictions]}
    assert utils.process_factor({}, [(-1.0, 0), (-1.0, 0), (-2.0, 0)]) == {"acc": 1.0}  # ties are correct
    assert utils.process_factor({}, [(-1.0, 0), (-0.5, 0), (-2.0, 0)]) == {"acc": 0.0}


def test_simple_evaluate_runs_a_memexp_task(sharp_llama_dir):
    """lm-eval end to end (in process, only the memexp tasks indexed): FACTOR as the project scores it."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from decoding.mc import evaluate_factor
    from decoding.mc_datasets import load_factor

    lm = DecodingLM(pretrained=sharp_llama_dir, head="sled", preset="factor", max_length=4096)
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model=lm, tasks=["memexp_factual_factor"], task_manager=tm, limit=4, log_samples=True
    )
    items = load_factor(TASKS_DIR.parent / "data" / "factual_factor.csv")[:4]
    want = evaluate_factor(lm.model, lm.tokenizer, items, head_for_task("sled", "factor"), progress=False)
    assert res["results"]["memexp_factual_factor"]["acc,none"] == want["accuracy"]
    for sample in res["samples"]["memexp_factual_factor"]:
        item = items[sample["doc_id"]]
        conts = [" " + c for c in [item.completion, *item.contradictions]]
        scores = score_continuations(lm.model, lm.tokenizer, item.prefix, conts, lm.head, post_softmax=True)
        assert [r[0] for r in sample["filtered_resps"]] == scores.tolist()
    json.dumps(res["results"])  # plain numbers, as lm-eval writes them


def _decoding_score(capsys, head: str, task: str, data: str, limit: int) -> dict:
    from decoding.cli import main

    capsys.readouterr()
    args = ["score", "--model", "tiny:llama", "--head", head, "--task", task, "--data", data]
    main([*args, "--limit", str(limit), "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["greedy", "sled"])
def test_lm_eval_cli_equals_decoding_score(head, tmp_path, capsys):
    """The real ``memexp-lm-eval`` command (lm-eval's CLI, all tasks indexed) on tiny:llama gives the
    MC1/MC2/MC3 and FACTOR accuracy of ``decoding score`` on the same items with the same head and preset.

    max_length=4096: tiny:llama declares 256 positions, fewer than the 6-shot prompt, and lm-eval's rule
    would cut the prompt where ``decoding score`` does not.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(root)}
    got = {}
    for task, preset in [("memexp_factual_mc", "truthfulqa-mc"), ("memexp_factual_factor", "factor")]:
        out = tmp_path / task
        cmd = [sys.executable, "-m", "decoding.lm_eval_cli", "--model", "memexp-decoding", "--tasks", task]
        cmd += ["--model_args", f"pretrained=tiny:llama,head={head},preset={preset},max_length=4096"]
        cmd += ["--limit", "5", "--device", "cpu", "--output_path", str(out)]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        (result,) = out.rglob("results_*.json")
        got[task] = json.loads(result.read_text())["results"][task]
    data = root / "decoding" / "data"
    want = _decoding_score(capsys, head, "truthfulqa-mc", str(data / "factual_mc.csv"), 5)
    for metric in ("mc1", "mc2", "mc3"):
        assert got["memexp_factual_mc"][f"{metric},none"] == pytest.approx(want[metric.upper()], abs=1e-12)
    assert got["memexp_factual_mc"]["mc2_nan,none"] == want["mc2_nan"] / 5
    want = _decoding_score(capsys, head, "factor", str(data / "factual_factor.csv"), 5)
    assert got["memexp_factual_factor"]["acc,none"] == pytest.approx(want["accuracy"], abs=1e-12)
