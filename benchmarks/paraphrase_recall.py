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

Other backbones and snap routing (``MoMEConfig.snap``): ``--backbone``, ``--facts`` and ``--heldout``
must repeat the run's model and data settings; ``--snap 0 inf`` measures every gate setting with snapping
off and with a snap radius of ``inf`` (every question takes its nearest fact's experts). The snap radius is
set on the trained model (its gate stores the facts' queries when it was trained with ``gate`` or ``snap``
> 0). The SmolLM2 runs (``configs/memexp/mome_smollm2_para.yaml``; RESULTS.md)::

    memexp fit --config configs/memexp/mome_smollm2_para.yaml --trainer.default_root_dir=runs/sm/plain
    OMP_NUM_THREADS=1 python benchmarks/paraphrase_recall.py plain=runs/sm/plain \\
        --backbone smollm2:135m-instruct --facts 50 --heldout 50 --snap 0 inf --out runs/sm/results
"""

import argparse
import json
import shlex
import sys
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


def recall(mome, tok, examples, batch: int = 32) -> float:
    """Fraction of ``examples`` whose greedy generation (KV cache) gives exactly the answer and its eos.

    Prompts of one length are generated together (no padding, so each row is what it would be alone);
    a row counts when its first ``len(answer_ids)`` generated tokens are the answer and eos.
    """
    groups: dict[int, list] = {}
    for ex in examples:
        groups.setdefault(len(ex.prompt_ids), []).append(ex)
    hits = 0
    for length, group in groups.items():
        for i in range(0, len(group), batch):
            chunk = group[i : i + batch]
            prompt = torch.tensor([ex.prompt_ids for ex in chunk])  # (B, P)
            out = mome.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max(len(ex.answer_ids) for ex in chunk),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            for row, ex in zip(out[:, length:].tolist(), chunk):
                hits += row[: len(ex.answer_ids)] == ex.answer_ids
    return hits / len(examples)


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
    """How the rewordings route (snapping off): ``overlap``, the mean fraction of the own fact's selected
    experts that a rewording also selects; ``nearest``, the fraction whose query is nearest (L2) its own
    fact's query; ``dist_ratio``, the median of d(rewording, own fact) / (the facts' spacing), the
    relative snap radius a rewording needs."""
    gate = mome.router.gate
    snap = gate.snap_radius.clone()
    gate.snap_radius = torch.zeros_like(snap)

    def route(examples):
        out = [mome.route(torch.tensor([e.prompt_ids])) for e in examples]
        return torch.cat([r.ids for r in out]), torch.cat([r.queries.flatten(1) for r in out])

    ids_o, q_o = route(originals)  # (F, heads*k), (F, D)
    gate.snap_radius = snap
    row = {e.fact_id: i for i, e in enumerate(originals)}
    own = torch.tensor([row[e.fact_id] for e in rewordings])
    ids_p, q_p = route(rewordings) if rewordings is not originals else (ids_o, q_o)
    shared = (ids_p[:, :, None] == ids_o[own][:, None, :]).any(-1).float().mean(1)  # (P,)
    dist = torch.cdist(q_p, q_o)  # (P, F)
    nearest = (dist.argmin(1) == own).float().mean()
    spacing = torch.cdist(q_o, q_o).fill_diagonal_(float("inf")).min(1).values.median()
    ratio = (dist[torch.arange(len(own)), own] / spacing).median()
    return {"overlap": shared.mean().item(), "nearest": nearest.item(), "dist_ratio": ratio.item()}


def provenance(backbone: str) -> dict:
    """Versions, thread count, the command line and (for a GGUF backbone) the GGUF's sha256."""
    from decoding.gguf import read_source
    from decoding.models import resolve_model_path
    from decoding.provenance import environment

    gguf = read_source(Path(resolve_model_path(backbone))) or {}
    return {
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "backbone": backbone,
        "gguf_sha256": gguf.get("sha256"),
        "command": "python " + shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def gate_set(mome, on: bool, radius: torch.Tensor) -> None:
    mome.router.gate.radius = radius.clone() if on else torch.zeros_like(radius)


def evaluate(
    name: str, folder: str, dm, base_nll: float, backbone: str, snaps: list[float], gates: list[str]
) -> dict:
    """Recall of every question set and held-out NLL change, per gate on/off and snap radius."""
    tok = dm.tokenizer
    mome = load_mome(backbone, Path(folder) / "mome").eval()
    gate = mome.router.gate
    if any(snaps) and gate.queries.shape[0] == 0:
        raise SystemExit(f"{folder}: no stored fact queries (trained with gate 0 and snap 0): drop --snap")
    sets = {"original": [e for e in dm.train_examples if e.source_id is None]}
    for template in CODE_TEMPLATES:
        facts = [
            Fact(f.id, p.question, f.answer)
            for f in dm.facts
            for p in paraphrases(f)
            if p.template == template
        ]
        sets[template] = [tokenize_fact(f, tok, TEMPLATE) for f in facts]
    radius = gate.radius.clone()
    result = {
        "name": name,
        "folder": folder,
        "gate_radius": float(radius),
        "trained_snap": mome.config.snap,
        "recall": {},
        "heldout_nll": {},
        "seconds": {},
    }
    with torch.no_grad():
        result["routing"] = {k: routing_stats(mome, sets["original"], exs) for k, exs in sets.items()}
        for on in [g == "on" for g in gates]:
            for snap in snaps:
                key = setting_key(on, snap)
                start = time.time()
                gate_set(mome, on, radius)
                gate.set_snap(snap)
                result["recall"][key] = {k: recall(mome, tok, exs) for k, exs in sets.items()}
                nll = answer_nll(mome, dm.heldout_examples, tok.pad_token_id)
                result["heldout_nll"][key] = {
                    "mome": nll,
                    "backbone": base_nll,
                    "rel_change": nll / base_nll - 1,
                }
                para = [v for k, v in result["recall"][key].items() if k != "original"]
                result["recall"][key]["paraphrase_mean"] = sum(para) / len(para)
                result["seconds"][key] = time.time() - start
                print(f"  {name} {key}: {time.time() - start:.0f} s", flush=True)
    return result


def setting_key(gate_on: bool, snap: float) -> str:
    """``on`` / ``off`` (snapping off: the tiny-backbone results' keys), else with the snap radius."""
    return ("on" if gate_on else "off") + (f", snap {snap:g}" if snap > 0 else "")


def routing_markdown(results: list[dict]) -> str:
    cols = ["original", *CODE_TEMPLATES]
    lines = ["| setting | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in results:
        cells = " | ".join(
            "{overlap:.2f} / {nearest:.2f} / {dist_ratio:.2f}".format(**r["routing"][c]) for c in cols
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
        for key, rec in r["recall"].items():
            cells = " | ".join(f"{rec[c]:.2f}" for c in cols)
            lines.append(
                f"| {r['name']} | {key} | {cells} | {100 * r['heldout_nll'][key]['rel_change']:+.2f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER (the run's default_root_dir, holding mome/)")
    p.add_argument("--out", default="benchmarks/results/paraphrase_recall", help="folder of the JSON results")
    p.add_argument("--backbone", default=BACKBONE, help="the runs' backbone (default: the demo's tiny Llama)")
    p.add_argument("--facts", type=int, default=200, help="the runs' num_random_facts")
    p.add_argument("--heldout", type=int, default=50, help="the runs' num_heldout")
    p.add_argument(
        "--snap", type=float, nargs="+", default=[0.0], help="relative snap radii to measure (0 = off, inf)"
    )
    p.add_argument(
        "--gates", nargs="+", choices=("on", "off"), default=["on", "off"], help="gate settings to measure"
    )
    args = p.parse_args()
    dm = FactsDataModule(
        tokenizer=args.backbone, num_random_facts=args.facts, num_heldout=args.heldout, batch_size=16
    )
    dm.setup()
    with torch.no_grad():
        base = load_causal_lm(args.backbone).eval()
        base_nll = answer_nll(base, dm.heldout_examples, dm.tokenizer.pad_token_id)
    del base
    results = []
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        start = time.time()
        results.append(evaluate(name, folder, dm, base_nll, args.backbone, args.snap, args.gates))
        results[-1]["provenance"] = provenance(args.backbone)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
        atomic_write_json(Path(args.out) / f"{name}.json", results[-1])
    print(markdown(results))
    print("expert overlap with the own fact / query nearest its own fact:")
    print(routing_markdown(results))
    print(json.dumps({r["name"]: r["heldout_nll"] for r in results}, indent=1))


if __name__ == "__main__":
    main()
