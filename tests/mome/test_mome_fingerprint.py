"""The MoME folder records its backbone's weight fingerprint; other weights of the same shape are refused."""

from __future__ import annotations

import json

import pytest
import torch

from decoding.errors import UserError
from decoding.models import load_causal_lm
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.checkpoint import backbone_fingerprint, load_mome, save_mome


def saved_mome(backbone, folder):
    torch.manual_seed(0)
    model = MoMEModel(backbone, MoMEConfig(num_experts=16, k=2, rank=1, sites=["*.layers.1.mlp.down_proj"]))
    save_mome(model, folder)
    return model


def test_fingerprint_ignores_wrapping_and_storage_dtype(tiny_llama_dir):
    raw = backbone_fingerprint(load_causal_lm(tiny_llama_dir))
    wrapped = MoMEModel(load_causal_lm(tiny_llama_dir), MoMEConfig(num_experts=8, k=2, rank=1))
    assert backbone_fingerprint(wrapped.backbone) == raw  # expert tables skipped, wrapped linears renamed
    assert backbone_fingerprint(load_causal_lm(tiny_llama_dir, dtype="bfloat16")) == raw


def test_fingerprint_sees_one_changed_tensor(tiny_llama_dir):
    model = load_causal_lm(tiny_llama_dir)
    before = backbone_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    assert backbone_fingerprint(model) != before


def test_same_shape_backbone_with_other_weights_is_refused(backbone, tiny_llama_dir, tmp_path):
    saved_mome(backbone, tmp_path / "mome")
    assert len(json.loads((tmp_path / "mome" / "manifest.json").read_text())["backbone_fingerprint"]) == 64
    load_mome(tiny_llama_dir, tmp_path / "mome")  # the backbone it was trained on
    other = load_causal_lm(tiny_llama_dir)
    with torch.no_grad():
        other.model.layers[0].self_attn.q_proj.weight.add_(0.05)
    with pytest.raises(UserError, match="other weights .* pass allow_other_backbone=True"):
        load_mome(other, tmp_path / "mome")
    assert load_mome(other, tmp_path / "mome", allow_other_backbone=True).sites  # explicit override


def test_folder_without_fingerprint_needs_the_override(backbone, tiny_llama_dir, tmp_path):
    saved_mome(backbone, tmp_path / "mome")
    path = tmp_path / "mome" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["backbone_fingerprint"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="records no backbone fingerprint.*allow_other_backbone=True"):
        load_mome(tiny_llama_dir, tmp_path / "mome")
    load_mome(tiny_llama_dir, tmp_path / "mome", allow_other_backbone=True)


def test_lightning_checkpoint_of_another_bank_or_module_is_refused(tiny_llama_dir):
    from memexp.mome.tuning import MoMETuning

    config = MoMEConfig(num_experts=16, k=2, rank=1, sites=["*.layers.1.mlp.down_proj"])
    module = MoMETuning(backbone=tiny_llama_dir, mome=config)
    mine = module.checkpoint_identity()
    module.check_checkpoint({"memexp": mine, "state_dict": dict(module.state_dict())})  # its own: accepted
    bigger = {**mine, "mome": {**mine["mome"], "num_experts": 32}}
    with pytest.raises(UserError, match=r"x\.ckpt belongs to another run \(mome=.*'num_experts': 32"):
        module.check_checkpoint({"memexp": bigger, "state_dict": {}}, "x.ckpt")
    lora = {"module": "memexp.fact_tuning.FactTuning", "backbone": tiny_llama_dir, "method": "lora"}
    with pytest.raises(UserError, match="module='memexp.fact_tuning.FactTuning' there"):
        module.check_checkpoint({"memexp": lora, "state_dict": {}}, "x.ckpt")
