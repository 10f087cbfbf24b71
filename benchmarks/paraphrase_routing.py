"""Routing under paraphrase: does a reworded question's query land on its own fact's query?

For ``--facts`` random facts (seeded) and the held-out templates of :mod:`memexp.paraphrase`, on each
backbone, for every layer l in 0..L (``hidden_states[l]``: the input of block l, what a MoME router
reads; l = L is the final norm's output), every pooling and every normalisation, this measures the
**paraphrase recall**: the fraction of paraphrases whose nearest original question (cosine) is their own
fact's. Prompts are ``"Q: {question}\\nA:"`` (the data module's default template).

Poolings (``POOLINGS``):
  mean     mean over all prompt tokens: what the router pools today (the data module's ``prompt_mask``)
  mean_q   mean over the question's own tokens (the template's tokens left out)
  last     the last prompt token
  entity   mean over the entity's tokens
  max      element-wise max over the prompt tokens

Normalisations (``NORMS``), fitted on the originals only:
  raw        the pooled state
  centre     minus the originals' mean
  proj       a random query projection ``nn.Linear(H, key_dim)`` (seeded: the router's W_q at init), centred
  bn         proj, centred, each dimension divided by its std over the originals (batch-norm at eval)
  whiten_nc  proj, then the ZCA matrix S = Cov^(-1/2) of the originals' projected queries, not centred
  whiten     S (q - mu): the router's phase-2 whitening (``MoMETuning._whiten_queries``) on that W_q
  whiten_s   the same with a shrunk covariance, Cov + 0.1 * mean variance * I (not in the router)

Metrics per (layer, pooling, norm, template): ``recall`` (cosine nearest original, recall@1 among N);
the MoME condition, keys = the originals' normalised queries searched by inner product: ``ip_recall1``,
``ip_recall8`` (own fact in the top 1 / top ``--k``); ``expert_overlap`` (fraction of the original's top-k
of ``--experts`` random keys, drawn as the router draws them, that the paraphrase also selects; projected
norms only); ``dist_ratio`` (median over facts of d(p_i, o_i) / min_{j != i} d(o_i, o_j), cosine distance:
how far a paraphrase moves relative to the spacing of the facts). Then recall@1 among ``--scale-facts``
facts for each backbone's best settings (any norm / whitened; with and without entity pooling; with
the router's mean pooling).

    OMP_NUM_THREADS=1 python benchmarks/paraphrase_routing.py
    python benchmarks/paraphrase_routing.py --backbones tiny:llama?hidden=64&layers=2 --facts 20 \\
        --scale-facts 40 --out /tmp/pr --png /tmp/pr.png
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decoding.errors import UserError, run_cli  # noqa: E402
from memexp.facts import random_facts  # noqa: E402
from memexp.paraphrase import code_entity, paraphrase_facts  # noqa: E402

TINY = "tiny:llama?hidden=128&layers=4&pretrain_steps=600"
SMOLLM2 = "smollm2:135m-instruct"
PROMPT = "Q: {question}\nA:"
POOLINGS = ("mean", "mean_q", "last", "entity", "max")
NORMS = ("raw", "centre", "proj", "bn", "whiten_nc", "whiten", "whiten_s")
PROJECTED = ("proj", "bn", "whiten_nc", "whiten", "whiten_s")
SHRINK = 0.1  # ridge of whiten_s, relative to the mean variance
METRICS = ("recall", "ip_recall1", "ip_recall8", "expert_overlap", "dist_ratio")


# ---------------------------------------------------------------------------------------- tokens
def encode(
    tok, questions: list[str], spans: list[tuple[int, int] | None], template: str = PROMPT
) -> list[dict]:
    """Tokenise prompts; mark the question's and the entity's tokens (by character offsets).

    Returns:
        One dict per prompt: ``ids`` (list[int]), ``question`` and ``entity`` (list[bool] per token).
    """
    prefix = template.index("{question}")
    out = []
    for question, span in zip(questions, spans):
        enc = tok(template.format(question=question), return_offsets_mapping=True)
        q_lo, q_hi = prefix, prefix + len(question)
        e_lo, e_hi = (prefix + span[0], prefix + span[1]) if span else (0, 0)
        overlap = [
            lambda s, e, lo=lo, hi=hi: s < hi and e > lo and e > s for lo, hi in ((q_lo, q_hi), (e_lo, e_hi))
        ]
        out.append(
            {
                "ids": list(enc["input_ids"]),
                "question": [overlap[0](s, e) for s, e in enc["offset_mapping"]],
                "entity": [overlap[1](s, e) for s, e in enc["offset_mapping"]],
            }
        )
    return out


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded prompts: ``input_ids``, ``attention_mask``, ``question``, ``entity`` (B, T)."""
    bsz, seq = len(items), max(len(it["ids"]) for it in items)
    batch = {
        "input_ids": torch.full((bsz, seq), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(bsz, seq, dtype=torch.long),
        "question": torch.zeros(bsz, seq, dtype=torch.bool),
        "entity": torch.zeros(bsz, seq, dtype=torch.bool),
    }
    for row, it in enumerate(items):
        n = len(it["ids"])
        batch["input_ids"][row, :n] = torch.tensor(it["ids"])
        batch["attention_mask"][row, :n] = 1
        batch["question"][row, :n] = torch.tensor(it["question"])
        batch["entity"][row, :n] = torch.tensor(it["entity"])
    return batch


# ---------------------------------------------------------------------------------------- hidden states
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(model).__name__} has no model.layers; use a Llama-like causal LM")
    return layers


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_states(model: nn.Module, batch: dict, layers: list[int]) -> dict[int, torch.Tensor]:
    """``hidden_states[l]`` ``(B, T, H)`` for each l in ``layers``; stops after the highest block needed.

    Layers below L are read by forward pre-hooks on the blocks (the input of block l, as a router reads
    it); l = L (after the final norm) comes from ``output_hidden_states``. The LM head never runs.
    """
    blocks = decoder_layers(model)
    num = len(blocks)
    if any(not 0 <= layer <= num for layer in layers):
        raise UserError(f"layers {layers} must lie in 0..{num}")
    states: dict[int, torch.Tensor] = {}
    stop_at = max(layers) if max(layers) < num else None

    def hook(index: int):
        def read(module, args, kwargs):
            states[index] = (args[0] if args else kwargs["hidden_states"]).detach()
            if index == stop_at:
                raise _Stop

        return read

    handles = [blocks[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in layers if i < num]
    try:
        out = model.model(  # the decoder without the LM head: only hidden states are needed
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=num in layers,
        )
        if num in layers:
            states[num] = out.hidden_states[num]
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return states


def pool(hidden: torch.Tensor, batch: dict, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` ``(B, T, H)`` over the tokens ``pooling`` names -> ``(B, H)``."""
    prompt = batch["attention_mask"].bool()
    if pooling == "last":
        last = prompt.sum(1) - 1  # (B,) right padding
        return hidden[torch.arange(hidden.shape[0]), last]
    if pooling == "max":
        return hidden.masked_fill(~prompt[..., None], -math.inf).amax(1)
    mask = {"mean": prompt, "mean_q": batch["question"], "entity": batch["entity"]}[pooling]
    m = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def extract(
    model: nn.Module,
    items: list[dict],
    pad_id: int,
    layers: list[int],
    poolings: tuple[str, ...],
    batch_size: int,
    desc: str,
) -> dict[str, torch.Tensor]:
    """Pooled states of every prompt: ``{pooling: (len(layers), N, H)}`` (float32)."""
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in poolings}
    for start in tqdm(range(0, len(items), batch_size), desc=desc, unit="batch", leave=False):
        batch = collate(items[start : start + batch_size], pad_id)
        states = layer_states(model, batch, layers)
        for p in poolings:
            chunks[p].append(torch.stack([pool(states[layer].float(), batch, p) for layer in layers]))
    return {p: torch.cat(c, dim=1) for p, c in chunks.items()}


# ---------------------------------------------------------------------------------------- normalisation
def fit_norm(name: str, originals: torch.Tensor, proj: nn.Linear | None, eps: float = 1e-6) -> Callable:
    """A map fitted on ``originals`` ``(N, H)`` (see the module docstring for ``name``)."""
    if name not in NORMS:
        raise UserError(f"normalisation {name!r} is unknown; choose from {', '.join(NORMS)}")
    x = originals.double()
    if name == "raw":
        return lambda z: z
    if name == "centre":
        mu = x.mean(0)
        return lambda z: z - mu.to(z.dtype)
    w, b = proj.weight.detach().double(), proj.bias.detach().double()  # (D, H), (D,)
    q = x @ w.T + b  # (N, D)
    mu = q.mean(0)
    if name == "proj":
        return lambda z: (z.double() @ w.T + b - mu).to(z.dtype)
    if name == "bn":
        std = (q.var(0, unbiased=False) + 1e-5).sqrt()
        return lambda z: ((z.double() @ w.T + b - mu) / std).to(z.dtype)
    cov = torch.cov(q.T, correction=0)  # (D, D)
    ridge = (SHRINK if name == "whiten_s" else eps) * cov.diagonal().mean().clamp_min(1e-30)
    evals, evecs = torch.linalg.eigh(cov)
    s = evecs @ torch.diag((evals.clamp_min(0) + ridge).rsqrt()) @ evecs.T  # (D, D)
    shift = torch.zeros_like(mu) if name == "whiten_nc" else mu
    return lambda z: ((z.double() @ w.T + b - shift) @ s.T).to(z.dtype)


# ---------------------------------------------------------------------------------------- metrics
def cell_metrics(
    originals: torch.Tensor,
    paraphrases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    keys: torch.Tensor | None,
    k: int,
) -> dict[str, dict[str, float]]:
    """Metrics of one (layer, pooling, norm) cell, per template.

    Args:
        originals: ``(N, D)`` normalised queries of the original questions.
        paraphrases: ``{template: (queries (M, D), own fact's row in originals (M,))}``.
        keys: ``(E, D)`` expert keys for ``expert_overlap`` (None: NaN).
        k: experts per query, and the rank of ``ip_recall8``.
    """
    on = nn.functional.normalize(originals, dim=-1)
    gram = on @ on.T  # (N, N)
    gram.fill_diagonal_(-math.inf)
    spacing = (1.0 - gram.max(1).values).clamp_min(1e-12)  # (N,) cosine distance to the nearest other fact
    own_experts = (originals @ keys.T).topk(k, dim=1).indices if keys is not None else None  # (N, k)
    out = {}
    for name, (p, target) in paraphrases.items():
        pn = nn.functional.normalize(p, dim=-1)
        cos = pn @ on.T  # (M, N)
        ip = p @ originals.T  # (M, N)
        rows = torch.arange(len(target))
        overlap = math.nan
        if keys is not None:
            mine = (p @ keys.T).topk(k, dim=1).indices  # (M, k)
            shared = (mine[:, :, None] == own_experts[target][:, None, :]).any(-1)  # (M, k)
            overlap = shared.float().mean().item()
        out[name] = {
            "recall": (cos.argmax(1) == target).float().mean().item(),
            "ip_recall1": (ip.argmax(1) == target).float().mean().item(),
            "ip_recall8": (ip.topk(min(k, ip.shape[1]), dim=1).indices == target[:, None])
            .any(1)
            .float()
            .mean()
            .item(),
            "expert_overlap": overlap,
            "dist_ratio": ((1.0 - cos[rows, target]) / spacing[target]).median().item(),
        }
    out["mean"] = {m: sum(v[m] for v in out.values()) / len(out) for m in METRICS}
    return out


def query_projection(hidden: int, key_dim: int, seed: int) -> nn.Linear:
    """The router's query projection as initialised (``nn.Linear`` default init), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(hidden, key_dim)


def expert_keys(num: int, key_dim: int, seed: int) -> torch.Tensor:
    """``(E, d_k)`` keys drawn as the router initialises them: N(0, d_k^-1/2)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(num, key_dim, generator=gen) * key_dim**-0.5


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
    import json

    from decoding.models import resolve_model_path
    from decoding.provenance import file_sha256

    path = Path(resolve_model_path(name))
    source = path / "gguf_source.json"
    gguf = json.loads(source.read_text()) if source.exists() else {}
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
