"""Independent oracles for the decoding tests: literal re-implementations of the references.

Nothing here imports the code under test's fast paths: per-layer lm_head calls instead of the
stacked GEMM, materialised (L, k, V) gradients with ``F.cosine_similarity`` for SLED, HF's
DoLa formulas written out, no KV cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PROMPTS = ["Q: What is the code of the city", "Q: who wrote", "A: 42 is the number of", "Q:"]


def random_lora(model: torch.nn.Module):
    """A copy of ``model`` with a seeded random (non-zero) LoRA on q and v: adapter on != adapter off."""
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with torch.random.fork_rng():  # lora_A is drawn from the global RNG: seed it, whatever ran before
        torch.manual_seed(3)
        peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return peft_model


def sled_reference_step(early, mature, rate, scale, lower_bound, op_t):
    """The reference SLED step for ONE position: early (L, V), mature (V,) -> (V,), materialised G."""
    v = mature.shape[-1]
    final = mature[None]  # (1, V)
    p_n = F.softmax(final, dim=-1)
    topk = torch.topk(p_n, scale).indices[0]  # (k,)
    p_l = F.softmax(early, dim=-1)  # (L, V)
    divergence = (early - final).to(torch.float32)  # (L, V)
    eye = torch.eye(v, dtype=early.dtype)[topk]  # (k, V)
    grads = (p_l[:, None, :] - eye[None]).to(torch.float32)  # (L, k, V) materialised
    cos = F.cosine_similarity(grads, divergence[:, None, :], dim=-1, eps=1e-8)  # (L, k)
    m = (cos * (cos > 0)) ** 2
    s = m.sum(-1)  # (L,)
    p_layer = torch.zeros_like(m)
    for i in range(m.shape[0]):
        if s[i] != 0:
            p_layer[i] = m[i] / s[i]
    total = s.sum()
    w = s / total if total != 0 else s
    p_lat = torch.zeros(v, dtype=torch.float32)
    p_lat[topk] = (w[:, None] * p_layer).sum(0)
    p_lat = p_lat.to(mature.dtype)
    z = final.clone()
    for t in range(op_t):
        lr = rate * (1 - t / op_t)
        z.sub_(lr * (F.softmax(z, dim=-1) + (-p_lat)))
    out = torch.full_like(mature, lower_bound)
    out[topk] = z[0, topk]
    return out


def dola_js(mature, early):
    """HF's DoLa divergence (KL to the mixture, averaged over V): mature (V,) float, early (C, V) -> (C,)."""
    p_n = mature.softmax(-1)
    out = []
    for z in early:
        p_l = z.softmax(-1)
        a = 0.5 * (p_n + p_l)
        kl1 = (a * (a.log() - mature.log_softmax(-1))).mean()
        kl2 = (a * (a.log() - z.log_softmax(-1))).mean()
        out.append(0.5 * (kl1 + kl2))
    return torch.stack(out)


def dola_reference_step(early, mature, candidates):
    """HF v4.43-v4.52 DoLa for one row: returns (scores (V,), js (C,)); M = first argmax."""
    mature = mature.float()
    js = dola_js(mature, early) if len(candidates) > 1 else torch.zeros(1)
    base = early[int(js.argmax())]
    s_n, s_m = mature.log_softmax(-1), base.log_softmax(-1)
    thr = s_n.max() + math.log(0.1)
    s_m = torch.where(s_n < thr, torch.full_like(s_m, -1e-3), s_m)
    s_n = torch.where(s_n < thr, torch.full_like(s_n, -float("inf")), s_n)
    return s_n - s_m, js


def per_layer_logits(model, ids, layers, position=-1):
    """No cache, full forward; separate lm_head call per layer at one position: (L, V), (V,)."""
    out = model(input_ids=ids, output_hidden_states=True)
    head = model.get_output_embeddings()
    early = torch.stack([head(out.hidden_states[i][0, position]) for i in layers]) if layers else None
    return early, out.logits[0, position]


def reference_generate(model, ids, layers, step, max_new_tokens, penalty=1.0, eos=None):
    """Batch-1 generation without cache: ``step(early, mature) -> scores``; HF's CTRL penalty; argmax."""
    from transformers import RepetitionPenaltyLogitsProcessor

    proc = RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            early, mature = per_layer_logits(model, ids, layers)
            scores = step(early, mature)[None]
            if proc is not None:
                scores = proc(ids, scores)
            nxt = int(scores.argmax(-1))
            new.append(nxt)
            if nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return new
