"""Other HF families (Mistral, Qwen2, Gemma, Gemma-2 with logit soft-capping): same conventions hold."""

from __future__ import annotations

import pytest
import torch
from decoding_oracles import PROMPTS

from decoding.generate import generate
from decoding.layers import layer_logits
from decoding.sled import SLED


def tiny_family(name: str, vocab: int):
    import transformers as tf

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    cfg_cls, model_cls, extra = {
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {"head_dim": 8}),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 8, "final_logit_softcapping": 5.0}),
    }[name]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**common, **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("name", ["mistral", "qwen2", "gemma", "gemma2"])
def test_family(name, llama):
    _, tok = llama
    model = tiny_family(name, len(tok))
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        x, _ = layer_logits(model, ids, [0, 1, 2])
        ref = model(ids, output_hidden_states=True)
        head = model.get_output_embeddings()
        torch.testing.assert_close(x.mature, ref.logits[:, -1], rtol=1e-5, atol=1e-5)  # softcap kept
        for row, layer in enumerate([0, 1, 2]):
            expect = head(ref.hidden_states[layer][:, -1])  # raw: no norm, no softcap
            torch.testing.assert_close(x.early[row], expect, rtol=1e-4, atol=1e-4)  # GEMM blocking differs
    if name == "gemma2":
        assert x.mature.abs().max() <= 5.0 and x.early.abs().max() > 5.0
    hf = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generate(model, tok, PROMPTS[0], max_new_tokens=6).token_ids[0] == hf[0, ids.shape[1] :].tolist()
    batched = generate(model, tok, PROMPTS, head=SLED(), max_new_tokens=6).token_ids
    assert batched == [generate(model, tok, p, head=SLED(), max_new_tokens=6).token_ids[0] for p in PROMPTS]
