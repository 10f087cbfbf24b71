"""Routing under paraphrase: does a reworded question's query land on its own fact's query?

For ``--facts`` random facts (seeded) and the held-out templates of :mod:`memexp.paraphrase`, on each
backbone, for every layer l in 0..L (``hidden_states[l]``: the input of block l, what a MoME router
reads; l = L is the final norm's output), every pooling and every normalisation, this measures the
**paraphrase recall**: the fraction of paraphrases whose nearest original question (cosine) is their own
fact's. Prompts are ``"Q: {question}\\nA:"`` (the data module's default template).

Poolings, normalisations and metrics are defined in ``paraphrase_probe.py``. Then recall@1 among
``--scale-facts`` facts for each backbone's best settings (any norm / whitened; with and without entity
pooling; with the router's mean pooling).

    OMP_NUM_THREADS=1 python benchmarks/paraphrase_routing.py
    python benchmarks/paraphrase_routing.py --backbones 'tiny:llama?hidden=64&layers=2' --facts 20 \\
        --scale-facts 40 --out /tmp/pr --png /tmp/pr.png
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paraphrase_probe import (  # noqa: E402
    NORMS,
    POOLINGS,
    PROJECTED,
    cell_metrics,
    decoder_layers,
    encode,
    expert_keys,
    extract,
    fit_norm,
    query_projection,
)

from decoding.errors import UserError, run_cli  # noqa: E402
from memexp.facts import random_facts  # noqa: E402
from memexp.paraphrase import code_entity, paraphrase_facts  # noqa: E402

TINY = "tiny:llama?hidden=128&layers=4&pretrain_steps=600"
SMOLLM2 = "smollm2:135m-instruct"


# ---------------------------------------------------------------------------------------- one backbone
def fact_prompts(
    tok, num: int, seed: int
) -> tuple[list[dict], list[dict], dict[str, tuple[list[int], torch.Tensor]]]:
    """Encoded originals, encoded paraphrases and ``{template: (paraphrase rows, own fact rows)}``."""
    facts = random_facts(num, seed)
    paras = paraphrase_facts(facts)
    originals = encode(tok, [f.question for f in facts], [code_entity(f.question) for f in facts])
    rewordings = encode(tok, [p.question for p in paras], [p.entity for p in paras])
    row_of = {f.id: i for i, f in enumerate(facts)}
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, p in enumerate(paras):
        rows, targets = groups.setdefault(p.template, ([], []))
        rows.append(i)
        targets.append(row_of[p.fact_id])
    return originals, rewordings, {t: (rows, torch.tensor(tg)) for t, (rows, tg) in groups.items()}


def measure(
    feats_o: dict[str, torch.Tensor],
    feats_p: dict[str, torch.Tensor],
    groups: dict[str, tuple[list[int], torch.Tensor]],
    settings: list[tuple[int, str, str]],
    layer_index: dict[int, int],
    proj: nn.Linear,
    keys: torch.Tensor,
    k: int,
    desc: str,
) -> list[dict]:
    """One row per (setting, template + ``mean``) with :data:`METRICS`."""
    rows = []
    for layer, pooling, norm in tqdm(settings, desc=desc, unit="cell", leave=False):
        li = layer_index[layer]
        orig = feats_o[pooling][li]  # (N, H)
        f = fit_norm(norm, orig, proj)
        para = {t: (f(feats_p[pooling][li][idx]), target) for t, (idx, target) in groups.items()}
        cells = cell_metrics(f(orig), para, keys if norm in PROJECTED else None, k)
        for template, values in cells.items():
            rows.append({"layer": layer, "pooling": pooling, "norm": norm, "template": template, **values})
    return rows


def best_setting(rows: list[dict], norm: str | None = None, oracle: bool = True) -> dict:
    """The ``mean`` row with the highest recall (then ip_recall1, then the lower layer).

    Args:
        norm: only this normalisation (any when None).
        oracle: allow ``entity`` pooling, which needs the entity's span (unknown for a user's question).
    """
    means = [
        r
        for r in rows
        if r["template"] == "mean"
        and (norm is None or r["norm"] == norm)
        and (oracle or r["pooling"] != "entity")
    ]
    return max(means, key=lambda r: (r["recall"], r["ip_recall1"], -r["layer"]))


def backbone_provenance(name: str) -> dict:
    """What the backbone is: its folder, the safetensors' sha256, the GGUF's sha256 when converted."""
    from decoding.gguf import read_source
    from decoding.models import resolve_model_path
    from decoding.provenance import file_sha256

    path = Path(resolve_model_path(name))
    gguf = read_source(path) or {}
    weights = path / "model.safetensors"
    return {
        "name": name,
        "safetensors_sha256": file_sha256(weights) if weights.exists() else None,
        "gguf_file": gguf.get("gguf_file"),
        "gguf_sha256": gguf.get("sha256"),
    }


def probe_backbone(name: str, args: argparse.Namespace) -> dict:
    """Every (layer, pooling, norm) cell on ``--facts`` facts, then the best settings on ``--scale-facts``."""
    from decoding.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(name, dtype="float32").eval()
    tok = load_tokenizer(name)
    num = len(decoder_layers(model))
    hidden = model.config.hidden_size
    proj = query_projection(hidden, args.key_dim, args.seed)
    keys = expert_keys(args.experts, args.key_dim, args.seed)
    layers = list(range(num + 1))
    short = name.split("?")[0] if name.startswith("smollm2") else name
    originals, rewordings, groups = fact_prompts(tok, args.facts, args.seed)
    feats_o = extract(model, originals, tok.pad_token_id, layers, POOLINGS, args.batch, f"{short}: originals")
    feats_p = extract(
        model, rewordings, tok.pad_token_id, layers, POOLINGS, args.batch, f"{short}: paraphrases"
    )
    cells = [(layer, p, n) for layer in layers for p in POOLINGS for n in NORMS]
    index = {layer: i for i, layer in enumerate(layers)}
    rows = measure(feats_o, feats_p, groups, cells, index, proj, keys, args.k, f"{short}: cells")
    del feats_o, feats_p
    chosen = [best_setting(rows, norm, oracle) for oracle in (True, False) for norm in (None, "whiten")]
    means = [r for r in rows if r["pooling"] == "mean"]  # the router's pooling today
    chosen += [best_setting(means), best_setting(means, "whiten")]
    settings = list(dict.fromkeys((r["layer"], r["pooling"], r["norm"]) for r in chosen))
    scale = []
    if args.scale_facts:
        need_layers = sorted({s[0] for s in settings})
        need_pool = tuple(dict.fromkeys(s[1] for s in settings))
        originals, rewordings, groups = fact_prompts(tok, args.scale_facts, args.seed)
        feats_o = extract(
            model,
            originals,
            tok.pad_token_id,
            need_layers,
            need_pool,
            args.batch,
            f"{short}: scale originals",
        )
        feats_p = extract(
            model,
            rewordings,
            tok.pad_token_id,
            need_layers,
            need_pool,
            args.batch,
            f"{short}: scale paraphrases",
        )
        index = {layer: i for i, layer in enumerate(need_layers)}
        scale = measure(feats_o, feats_p, groups, settings, index, proj, keys, args.k, f"{short}: scale")
    return {
        "backbone": name,
        "num_layers": num,
        "hidden_size": hidden,
        "provenance": backbone_provenance(name),
        "templates": list(groups),
        "rows": rows,
        "scale": scale,
        "scale_settings": [list(s) for s in settings],
    }


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=[TINY, SMOLLM2], help="decoding model names")
    p.add_argument("--facts", type=int, default=200, help="random facts (seeded) of the layer/pooling sweep")
    p.add_argument("--scale-facts", type=int, default=1000, help="facts of the scaling check (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="facts, query projection and expert keys")
    p.add_argument("--key-dim", type=int, default=64, help="router query width d_k (MoMEConfig default 64)")
    p.add_argument("--experts", type=int, default=4096, help="random expert keys for expert_overlap")
    p.add_argument("--k", type=int, default=8, help="experts per query, and the rank of ip_recall8")
    p.add_argument("--batch", type=int, default=64, help="prompts per forward pass")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="benchmarks/results/paraphrase_routing", help="output folder (replaced)")
    p.add_argument("--png", default="docs/img/paraphrase_routing.png", help="copy of the figure ('' = none)")
    args = p.parse_args(argv)
    for flag in ("facts", "key_dim", "experts", "k", "batch", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    if args.facts < 2 or args.scale_facts < 0 or args.k > args.experts:
        raise UserError(
            f"need --facts >= 2 (got {args.facts}), --scale-facts >= 0 (got {args.scale_facts}) and "
            f"--k <= --experts (got {args.k} > {args.experts})"
        )
    return args


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    from paraphrase_report import render_markdown, render_png, write_csv

    from decoding.provenance import environment
    from decoding.run_folder import atomic_file, atomic_write_dir, atomic_write_json, atomic_write_text

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "png")},
        "environment": environment(),
        "git_commit": git.stdout.strip() or None,
        "command": "python " + shlex.join(sys.argv),
        "backbones": [probe_backbone(name, args) for name in args.backbones],
    }

    def fill(folder: Path) -> None:
        write_csv(result, folder / "paraphrase_routing.csv", folder / "scale.csv")
        atomic_write_json(
            folder / "results.json",
            {
                **result,
                "backbones": [{k: v for k, v in b.items() if k != "rows"} for b in result["backbones"]],
            },
        )
        atomic_write_text(folder / "results.md", render_markdown(result))
        render_png(result, folder / "paraphrase_routing.png")

    atomic_write_dir(args.out, fill)
    if args.png:
        with atomic_file(args.png) as fh:
            fh.write((Path(args.out) / "paraphrase_routing.png").read_bytes())
    print(render_markdown(result))
    print(f"wrote {args.out}/ (paraphrase_routing.csv, scale.csv, results.json, results.md, PNG)")


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv, prog="paraphrase_routing")


if __name__ == "__main__":
    main()
