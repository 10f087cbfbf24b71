"""Questions a real backbone already answers: the task of the random-label study on a pretrained model.

The code knowledge base (:mod:`experiments.code_facts`) needs a base model pretrained on it. A real model
such as SmolLM2-135M-Instruct knows other things: capitals, opposites, plurals, sums
(:mod:`experiments.one_word_qa`). :func:`scan` asks the backbone each question once, greedily, in the facts'
prompt template (``"Q: {question}\\nA:"``) and keeps its own first line of answer::

    Q: What is the capital of France?
    A: The capital of France is Paris.        # "said"; correct: it contains the expected word

:func:`known_task` splits the questions the backbone answers correctly into

- **training facts**: the question with its one-word answer (``Paris``), which the study corrupts at
  fraction p with another answer of the same family (:func:`experiments.code_facts.corrupt` with answer
  pools: a wrong capital, a wrong plural), as random labels in Zhang et al. are other classes;
- **held-out facts**: questions of *other families* (unrelated to every training question) that the
  backbone answers correctly, with the backbone's own answer sentence. Two held-out measures:
  **accuracy** (:func:`heldout_accuracy`: the greedy answer, generated one question at a time, still
  contains the expected word, whatever its wording) and **same sentence** (``answer_exact`` of
  :mod:`memexp.fact_eval`: greedy decoding still begins with the backbone's own sentence, word for word;
  only sentences the backbone reproduces teacher-forced are kept, so its "before" is 1.0). Training on
  one-word answers teaches a style, so the sentence can change while the knowledge stays: accuracy is the
  study's held-out measure, the sentence shows how much the style moved.

The scan is written once per run folder (``known_facts.json``, atomically) and read back on resume.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from decoding.errors import UserError
from decoding.run_folder import atomic_write_json
from experiments.one_word_qa import FAMILIES
from memexp.facts import Fact

TEMPLATE = "Q: {question}\nA:"
HELDOUT_FAMILIES = ("colour", "young", "sum")  # the rest (capital, opposite, language, plural) train
SCAN_FILE = "known_facts.json"


@dataclass(frozen=True)
class KnownTask:
    """Training facts (one-word true answers), held-out facts (the backbone's sentences) and answer pools."""

    train: list[Fact]
    heldout: list[Fact]
    pools: dict[int, list[str]]  # training fact id -> its family's answers (the random labels' choices)
    expected: list[str]  # per held-out fact, the word a correct answer contains


def says(expected: str, said: str) -> bool:
    """Whether the answer sentence ``said`` contains the word ``expected`` (case-insensitive, whole word)."""
    return re.search(rf"\b{re.escape(expected)}\b", said, flags=re.IGNORECASE) is not None


@torch.no_grad()
def greedy_lines(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 24, batch: int = 16
) -> list[str]:
    """The first line of each prompt's continuation by the Greedy decoding head (batches of ``batch``).

    ``model``: an HF causal LM, a peft model or a :class:`memexp.mome.MoMEModel`
    (:func:`decoding.generate.generate` routes it on the prompt).
    """
    from tqdm.auto import tqdm

    from decoding.generate import generate

    out: list[str] = []
    for i in tqdm(range(0, len(prompts), batch), desc="greedy answers", leave=False):
        res = generate(model, tokenizer, prompts[i : i + batch], None, max_new_tokens)
        out += [text.strip().split("\n")[0].strip() for text in res.texts]
    return out


def scan(backbone: str, template: str = TEMPLATE) -> list[dict]:
    """Ask ``backbone`` every one-word-QA question (first phrasing); one dict per question.

    Keys: ``family``, ``entity``, ``question``, ``expected``, ``said`` (first line of the greedy answer),
    ``correct`` (``said`` contains ``expected``) and ``reproduced`` (teacher-forced greedy decoding of
    ``question`` begins with ``said``: :func:`memexp.fact_eval.fact_columns`' ``answer_exact``).
    """
    from decoding.models import load_causal_lm, load_tokenizer
    from memexp.data import collate_examples, tokenize_fact
    from memexp.fact_eval import evaluate_batch

    tokenizer = load_tokenizer(backbone)
    model = load_causal_lm(backbone).eval()
    items = [
        {"family": family, "entity": entity, "question": templates[0].format(entity), "expected": answer}
        for family, (facts, templates) in FAMILIES.items()
        for entity, answer in sorted(facts.items())
    ]
    said = greedy_lines(model, tokenizer, [template.format(question=it["question"]) for it in items])
    pad = tokenizer.pad_token_id  # load_tokenizer gives every tokenizer one (EOS when it has none)
    for i, (it, line) in enumerate(zip(items, said)):
        it["said"], it["correct"], it["reproduced"] = line, bool(line) and says(it["expected"], line), False
        if not it["correct"]:
            continue
        try:
            example = tokenize_fact(Fact(i, it["question"], line), tokenizer, template)
        except UserError:  # the sentence does not survive tokenisation: cannot be scored
            continue
        batch = collate_examples([example], pad)
        it["reproduced"] = bool(evaluate_batch(model, batch)["answer_exact"][0])
    return items


def load_or_scan(root: Path, backbone: str, template: str = TEMPLATE) -> list[dict]:
    """The scan of ``backbone`` kept in ``root/known_facts.json`` (made once, atomically)."""
    path = root / SCAN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["backbone"] != backbone or saved["template"] != template:
            raise UserError(
                f"{path} was scanned with backbone {saved['backbone']!r} and template {saved['template']!r}; "
                "use a new run name (or delete the file to scan again)"
            )
        return saved["items"]
    items = scan(backbone, template)
    atomic_write_json(path, {"backbone": backbone, "template": template, "items": items})
    return items


def known_task(items: list[dict], num_train: int, num_heldout: int, seed: int = 0) -> KnownTask:
    """Split a :func:`scan` into training facts and held-out facts of other families (module docstring).

    Raises:
        UserError: fewer correctly answered questions than asked for (the message gives how many exist).
    """
    train_pool = [it for it in items if it["correct"] and it["family"] not in HELDOUT_FAMILIES]
    held_pool = [it for it in items if it["reproduced"] and it["family"] in HELDOUT_FAMILIES]
    if num_train > len(train_pool) or num_heldout > len(held_pool):
        raise UserError(
            f"the backbone answers {len(train_pool)} training-family and {len(held_pool)} held-out-family "
            f"questions correctly; got num_train={num_train}, num_heldout={num_heldout}: lower them"
        )
    rng = random.Random(f"known-{seed}")
    chosen = rng.sample(train_pool, num_train)
    held = rng.sample(held_pool, num_heldout)
    answers = {f: sorted(set(facts.values())) for f, (facts, _) in FAMILIES.items()}
    train = [Fact(i, it["question"], it["expected"]) for i, it in enumerate(chosen)]
    pools = {i: answers[it["family"]] for i, it in enumerate(chosen)}
    heldout = [Fact(num_train + i, it["question"], it["said"]) for i, it in enumerate(held)]
    return KnownTask(train, heldout, pools, [it["expected"] for it in held])


def heldout_accuracy(
    model, tokenizer, task: KnownTask, template: str = TEMPLATE
) -> tuple[list[float], list[str]]:
    """Per held-out question: 1.0 when ``model``'s greedy answer (one question at a time) contains the word,
    and the answer's first line.

    ``model``: an HF causal LM, a peft model or a :class:`memexp.mome.MoMEModel` (it routes on the question
    up to ``"\nA:"``); it is put in eval mode and back.
    """
    was_training = model.training
    model.eval()
    try:
        prompts = [template.format(question=f.question) for f in task.heldout]
        said = greedy_lines(model, tokenizer, prompts, batch=1)
    finally:
        model.train(was_training)
    return [float(says(word, line)) for word, line in zip(task.expected, said)], said


def heldout_after_fit(root: Path, backbone: str, task: KnownTask) -> Callable:
    """The known-facts held-out accuracy: the backbone's once (``heldout_before.json``), each cell's after."""
    from decoding.models import load_causal_lm, load_tokenizer

    path = root / "heldout_before.json"
    if not path.exists():
        model = load_causal_lm(backbone)
        before, said = heldout_accuracy(model, load_tokenizer(backbone), task)
        questions = [f.question for f in task.heldout]
        atomic_write_json(path, {"questions": questions, "correct": before, "said": said})
        del model
    saved = json.loads(path.read_text())
    if saved["questions"] != [f.question for f in task.heldout]:
        raise UserError(f"{path} belongs to other held-out questions; delete it or use a new run name")
    before = saved["correct"]

    def after_fit(module, data) -> dict:
        after, said = heldout_accuracy(module.model, data.tokenizer, task)
        return {
            "heldout_correct_before": sum(before) / len(before),
            "heldout_correct_after": sum(after) / len(after),
            "heldout_correct_items": after,
            "heldout_said": said,
        }

    return after_fit
