"""Per-layer logits: stacked GEMM == per-layer lm_head calls; the hidden-state convention; errors."""

from __future__ import annotations

import pytest
import torch

from decoding.layers import as_layer_logits, layer_logits, layer_logits_at, project_layers


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_stacked_gemm_equals_per_layer_lm_head(name, request):
    model, tok = request.getfixturevalue(name)
    enc = tok(["Q: What is the code", "A: 1"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        stacked = project_layers(model, out.hidden_states, [0, 1, 2, 3])  # (4, B, V)
        head = model.get_output_embeddings()
        for row, layer in enumerate([0, 1, 2, 3]):
            expect = head(out.hidden_states[layer][:, -1])
            torch.testing.assert_close(stacked[row], expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_layer_logits_convention(name, request):
    """Mature = outputs.logits at the last position; early = lm_head(un-normed h_l); final_norm option."""
    model, tok = request.getfixturevalue(name)
    ids = tok("Q: What is the code of", return_tensors="pt").input_ids
    with torch.no_grad():
        x, cache = layer_logits(model, ids, [0, 2])
        ref = model(ids, output_hidden_states=True)
        torch.testing.assert_close(x.mature, ref.logits[:, -1], rtol=1e-5, atol=1e-5)
        head = model.get_output_embeddings()
        torch.testing.assert_close(x.early[1], head(ref.hidden_states[2][:, -1]), rtol=1e-5, atol=1e-5)
        # hidden_states[N] is already normed: its projection is the mature logits
        torch.testing.assert_close(head(ref.hidden_states[-1][:, -1]), x.mature, rtol=1e-5, atol=1e-5)
        normed, _ = layer_logits(model, ids, [2], final_norm=True)
        norm = model.model.norm if name == "llama" else model.transformer.ln_f
        expect = head(norm(ref.hidden_states[2][:, -1]))
        torch.testing.assert_close(normed.early[0], expect, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(normed.early[0], x.early[1])
    assert cache is not None and x.num_layers == 4 and x.tied == (name == "gpt2")


def test_layer_logits_at_positions(llama):
    model, tok = llama
    ids = tok("Q: What is the code of the city", return_tensors="pt").input_ids
    index = torch.tensor([[1, 3, ids.shape[1] - 1]])
    with torch.no_grad():
        x = layer_logits_at(model, ids, torch.ones_like(ids), index, [0, 3])
        ref = model(ids, output_hidden_states=True)
        head = model.get_output_embeddings()
    for j, pos in enumerate(index[0].tolist()):
        torch.testing.assert_close(x.mature[0, j], ref.logits[0, pos], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.early[1, 0, j], head(ref.hidden_states[3][0, pos]), rtol=1e-5, atol=1e-5)


def test_plain_tensor_wrapping():
    t = torch.randn(5, 2, 7)  # (layers, batch, classes)
    x = as_layer_logits(t)
    assert x.layers == (0, 1, 2, 3) and x.num_layers == 4
    assert torch.equal(x.mature, t[-1]) and torch.equal(x.select([1, 3]), t[[1, 3]])
    with pytest.raises(ValueError, match="at least 2 layers"):
        as_layer_logits(torch.randn(1, 3))


def test_bad_layers_and_models(llama):
    model, tok = llama
    ids = tok("Q:", return_tensors="pt").input_ids
    with pytest.raises(ValueError, match=r"layer index 4 is out of range: early layers are 0\.\.3"):
        layer_logits(model, ids, [0, 4])
    with pytest.raises(ValueError, match="layer index -1"):
        layer_logits(model, ids, [-1])
    with pytest.raises(ValueError, match="no accessible lm_head"):
        layer_logits(model.model, ids, [0])


def test_model_without_hidden_states(llama):
    model, tok = llama

    class NoHidden(torch.nn.Module):
        config = model.config

        def get_output_embeddings(self):
            return model.get_output_embeddings()

        def get_input_embeddings(self):
            return model.get_input_embeddings()

        def forward(self, **kwargs):
            out = model(**kwargs)
            out.hidden_states = None
            return out

    ids = tok("Q:", return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="did not return 5 hidden states"):
        layer_logits(NoHidden(), ids, [0])
