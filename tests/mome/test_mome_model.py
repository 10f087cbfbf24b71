"""MoME on a real HF backbone: one-pass routing == an independent two-pass oracle; experts off == backbone."""

from __future__ import annotations

import pytest
import torch

from decoding.models import load_causal_lm
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.sites import match_sites

SITE = "model.layers.1.mlp.down_proj"


def make(backbone, **kw):
    args = dict(
        num_experts=64,
        k=4,
        rank=2,
        sites=[SITE, "model.layers.1.self_attn.v_proj"],
        query_layer=1,
        balance="none",
    )
    args.update(kw)
    torch.manual_seed(0)
    model = MoMEModel(backbone, MoMEConfig(**args))
    for site in model.sites.values():
        torch.nn.init.normal_(site.B.weight, std=0.2)  # non-zero experts so they change the output
    return model.eval()


def test_forward_equals_two_pass_oracle_with_loop_over_experts(backbone, batch, tiny_llama_dir):
    ids, attn, qmask = batch
    model = make(backbone)
    got = model(ids, attention_mask=attn, question_mask=qmask).logits
    ref_model = load_causal_lm(tiny_llama_dir).eval()  # pristine backbone
    hidden = ref_model(ids, attention_mask=attn, output_hidden_states=True).hidden_states[1]  # (B, T, H)
    pooled = torch.stack([hidden[b][qmask[b]].mean(0) for b in range(3)])
    q = model.router.query(pooled)
    top = (q @ model.router.keys.weight.t()).topk(4, dim=-1)
    weights = top.values.softmax(-1)

    def add_experts(site):
        def hook(module, inputs, output):
            x = inputs[0]
            extra = torch.zeros_like(output)
            for b in range(x.shape[0]):
                for e, w in zip(top.indices[b].tolist(), weights[b]):
                    a = site.A.weight[e].view(2, -1)  # (r, d_in)
                    bb = site.B.weight[e].view(2, -1)  # (r, d_out)
                    extra[b] += w * (x[b] @ a.t() @ bb)
            return output + extra

        return hook

    for name, site in model.sites.items():
        ref_model.get_submodule(name).register_forward_hook(add_experts(site))
    want = ref_model(ids, attention_mask=attn).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_experts_off_is_bit_identical_to_the_backbone(backbone, batch, tiny_llama_dir):
    ids, attn, qmask = batch
    model = make(backbone)
    ref = load_causal_lm(tiny_llama_dir).eval()(ids, attention_mask=attn).logits
    assert not torch.equal(model(ids, attention_mask=attn, question_mask=qmask).logits, ref)
    with model.experts_off():
        assert torch.equal(model(ids, attention_mask=attn).logits, ref)
    assert not torch.equal(model(ids, attention_mask=attn, question_mask=qmask).logits, ref)  # back on


def test_training_step_never_changes_the_backbone(backbone, batch):
    ids, attn, qmask = batch
    model = make(backbone)
    frozen = {
        n: p.detach().clone()
        for n, p in model.backbone.named_parameters()
        if not n.endswith((".A.weight", ".B.weight"))
    }
    assert len(frozen) == len(list(backbone.parameters())) - 4 and not any(
        model.backbone.get_parameter(n).requires_grad for n in frozen
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(
        n.startswith("router.") or n.endswith((".A.weight", ".B.weight")) for n in trainable
    )
    sparse = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and (n.endswith("A.weight") or n.endswith("B.weight") or n == "router.keys.weight")
    ]
    dense = [p for n, p in model.named_parameters() if p.requires_grad and all(p is not s for s in sparse)]
    opts = [torch.optim.SparseAdam(sparse, lr=1e-2), torch.optim.AdamW(dense, lr=1e-2)]
    before = model.sites[SITE].B.weight.detach().clone()
    model.train()
    for _ in range(2):
        out = model(ids, attention_mask=attn, question_mask=qmask, labels=ids)
        out.loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    assert not torch.equal(model.sites[SITE].B.weight, before)
    for name, p in model.backbone.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_cached_generation_reuses_the_prompt_routing(backbone):
    model = make(backbone)
    prompt = torch.randint(5, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    gen = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False, pad_token_id=0
    )
    seq = prompt  # oracle: no cache, the router always pools over the prompt only
    qmask_len = prompt.shape[1]
    for _ in range(5):
        qmask = torch.zeros_like(seq, dtype=torch.bool)
        qmask[:, :qmask_len] = True
        nxt = model(seq, question_mask=qmask).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(gen, seq)


def test_fixed_expert_ids_skip_the_router(backbone, batch):
    ids, attn, qmask = batch
    model = make(backbone)
    routing = model.route(ids, attn, qmask)
    a = model(ids, attention_mask=attn, question_mask=qmask).logits
    b = model(ids, attention_mask=attn, expert_ids=routing.ids, expert_weights=routing.weights).logits
    torch.testing.assert_close(a, b)
    c = model(ids, attention_mask=attn, expert_ids=(routing.ids + 1) % 64).logits
    assert not torch.allclose(a, c)


def test_site_pattern_that_matches_nothing_lists_candidates(backbone):
    with pytest.raises(ValueError, match=r"matches no nn.Linear.*model\.layers\.0\.self_attn\.q_proj"):
        match_sites(backbone, ["model.layers.9.mlp.up_proj"])
    assert match_sites(backbone, ["*.layers.[01].mlp.down_proj"]) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_query_layer_after_first_site_is_refused(backbone):
    with pytest.raises(ValueError, match="query_layer=1 comes after the expert site in layer 0"):
        MoMEModel(
            backbone, MoMEConfig(num_experts=8, k=2, sites=["model.layers.0.mlp.down_proj"], query_layer=1)
        )


def test_k_larger_than_bank_is_refused():
    with pytest.raises(ValueError, match="k=9"):
        MoMEConfig(num_experts=8, k=9)
    with pytest.raises(ValueError, match="rank=0"):
        MoMEConfig(num_experts=8, k=2, rank=0)
