"""The measuring pieces of ``benchmarks/paraphrase_routing.py``: prompts, hidden states, poolings,
normalisations and metrics.

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
  whiten     S (q - mu): the router's phase-2 whitening (``Router.whiten``) on that W_q
  whiten_s   the same with a shrunk covariance, Cov + 0.1 * mean variance * I (not in the router)

Metrics per (layer, pooling, norm, template): ``recall`` (cosine nearest original, recall@1 among N);
the MoME condition, keys = the originals' normalised queries searched by inner product: ``ip_recall1``,
``ip_recall8`` (own fact in the top 1 / top ``--k``); ``expert_overlap`` (fraction of the original's top-k
of ``--experts`` random keys, drawn as the router draws them, that the paraphrase also selects; projected
norms only); ``dist_ratio`` (median over facts of d(p_i, o_i) / min_{j != i} d(o_i, o_j), cosine distance:
how far a paraphrase moves relative to the spacing of the facts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from decoding.errors import UserError

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
