"""Paraphrase recall after training: does a trained MoME answer a reworded question through generation?

For each trained run (``NAME=RUN_FOLDER`` with the ``mome/`` export of a run of
``configs/memexp/mome_demo.yaml``), greedy :meth:`MoMEModel.generate` (KV cache) answers the 200
original questions and their 7 held-out rewordings (:data:`memexp.paraphrase.CODE_TEMPLATES`); a
question is recalled when the first generated tokens are exactly the answer and its eos. Measured with
the run's fact gate (``gate on``) and with the gate opened for everything (``gate off``, radius 0).
Interference: mean held-out answer NLL per token (the 50 held-out facts), MoME vs the frozen backbone.

    memexp fit --config configs/memexp/mome_demo.yaml --trainer.default_root_dir=runs/para/today \\
        --trainer.max_epochs=200
    OMP_NUM_THREADS=1 python benchmarks/paraphrase_recall.py today=runs/para/today \\
        --out benchmarks/results/paraphrase_recall
"""

import argparse
import json
import time
from pathlib import Path

import torch

from decoding.models import load_causal_lm
from decoding.run_folder import atomic_write_json
from memexp.data import FactsDataModule, collate_examples, tokenize_fact
from memexp.facts import Fact
from memexp.mome import load_mome
from memexp.paraphrase import CODE_TEMPLATES, paraphrases

BACKBONE = "tiny:llama?hidden=128&layers=4&pretrain_steps=600"  # the demo's (configs/memexp/mome_demo.yaml)
TEMPLATE = "Q: {question}\nA:"  # FactsDataModule's default prompt template


def recalled(mome, tok, ex) -> bool:
    """Greedy generation (KV cache) of one prompt gives exactly the answer and its eos."""
    prompt = torch.tensor([ex.prompt_ids])  # (1, P)
    out = mome.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=len(ex.answer_ids),
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return out[0, prompt.shape[1] :].tolist() == ex.answer_ids


def answer_nll(model, examples, pad_id: int, batch: int = 25) -> float:
    """Mean answer NLL per token (nats) of ``examples`` under ``model`` (a MoME or a plain backbone)."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        b = collate_examples(examples[i : i + batch], pad_id)
        logits = model(b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, T, V)
        labels = b["labels"][:, 1:]  # (B, T-1)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        total, count = total + nll.item(), count + int((labels != -100).sum())
    return total / count


def routing_stats(mome, originals, rewordings) -> dict[str, float]:
    """How the rewordings route: ``overlap``, the mean fraction of the own fact's selected experts that a
    rewording also selects; ``nearest``, the fraction whose query is nearest (L2) its own fact's query."""

    def route(examples):
        out = [mome.route(torch.tensor([e.prompt_ids])) for e in examples]
        return torch.cat([r.ids for r in out]), torch.cat([r.queries.flatten(1) for r in out])

    ids_o, q_o = route(originals)  # (F, heads*k), (F, D)
    row = {e.fact_id: i for i, e in enumerate(originals)}
    own = torch.tensor([row[e.fact_id] for e in rewordings])
    ids_p, q_p = route(rewordings)
    shared = (ids_p[:, :, None] == ids_o[own][:, None, :]).any(-1).float().mean(1)  # (P,)
    nearest = (torch.cdist(q_p, q_o).argmin(1) == own).float().mean()
    return {"overlap": shared.mean().item(), "nearest": nearest.item()}


def gate_set(mome, on: bool, radius: torch.Tensor) -> None:
    mome.router.gate.radius = radius.clone() if on else torch.zeros_like(radius)


def evaluate(name: str, folder: str, dm, base_nll: float) -> dict:
    tok = dm.tokenizer
    mome = load_mome(BACKBONE, Path(folder) / "mome").eval()
    sets = {"original": dm.train_examples}
    for template in CODE_TEMPLATES:
        facts = [
            Fact(f.id, p.question, f.answer)
            for f in dm.facts
            for p in paraphrases(f)
            if p.template == template
        ]
        sets[template] = [tokenize_fact(f, tok, TEMPLATE) for f in facts]
    radius = mome.router.gate.radius.clone()
    result = {"name": name, "folder": folder, "gate_radius": float(radius), "recall": {}, "heldout_nll": {}}
    with torch.no_grad():
        result["routing"] = {k: routing_stats(mome, sets["original"], exs) for k, exs in sets.items()}
        for gate in ("on", "off"):
            gate_set(mome, gate == "on", radius)
            result["recall"][gate] = {
                k: sum(recalled(mome, tok, e) for e in exs) / len(exs) for k, exs in sets.items()
            }
            nll = answer_nll(mome, dm.heldout_examples, tok.pad_token_id)
            result["heldout_nll"][gate] = {
                "mome": nll,
                "backbone": base_nll,
                "rel_change": nll / base_nll - 1,
            }
            para = [v for k, v in result["recall"][gate].items() if k != "original"]
            result["recall"][gate]["paraphrase_mean"] = sum(para) / len(para)
    return result


def routing_markdown(results: list[dict]) -> str:
    cols = ["original", *CODE_TEMPLATES]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in results:
        cells = " | ".join(
            f"{r['routing'][c]['overlap']:.2f} / {r['routing'][c]['nearest']:.2f}" for c in cols
        )
        lines.append(f"| {r['name']} | {cells} |")
    return "\n".join(lines)


def markdown(results: list[dict]) -> str:
    cols = ["original", *CODE_TEMPLATES, "paraphrase_mean"]
    lines = [
        "| setting | gate | " + " | ".join(cols) + " | held-out NLL change |",
        "|---|---|" + "---|" * len(cols) + "---|",
    ]
    for r in results:
        for gate in ("on", "off"):
            rec = r["recall"][gate]
            cells = " | ".join(f"{rec[c]:.2f}" for c in cols)
            lines.append(
                f"| {r['name']} | {gate} | {cells} | {100 * r['heldout_nll'][gate]['rel_change']:+.2f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER (the run's default_root_dir, holding mome/)")
    p.add_argument("--out", default="benchmarks/results/paraphrase_recall", help="folder of the JSON results")
    args = p.parse_args()
    dm = FactsDataModule(tokenizer=BACKBONE, num_random_facts=200, num_heldout=50, batch_size=16)
    dm.setup()
    with torch.no_grad():
        base_nll = answer_nll(load_causal_lm(BACKBONE).eval(), dm.heldout_examples, dm.tokenizer.pad_token_id)
    results = []
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        start = time.time()
        results.append(evaluate(name, folder, dm, base_nll))
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
        atomic_write_json(Path(args.out) / f"{name}.json", results[-1])
    print(markdown(results))
    print("expert overlap with the own fact / query nearest its own fact:")
    print(routing_markdown(results))
    print(json.dumps({r["name"]: r["heldout_nll"] for r in results}, indent=1))


if __name__ == "__main__":
    main()
