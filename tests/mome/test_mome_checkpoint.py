"""MoME checkpoint: exact round trip on a fresh backbone; corrupt, truncated or foreign inputs are refused."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from decoding.models import load_causal_lm
from decoding.tiny import build_tiny_lm
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.checkpoint import load_mome, save_mome
from memexp.mome.index import IndexConfig


def trained_model(backbone, kind="flat"):
    torch.manual_seed(0)
    model = MoMEModel(
        backbone,
        MoMEConfig(
            num_experts=50, k=3, rank=1, sites=["*.layers.1.mlp.*_proj"], index=IndexConfig(kind=kind)
        ),
    )
    for site in model.sites.values():
        torch.nn.init.normal_(site.B.weight, std=0.2)
    model.router.train()
    model.route(torch.randint(5, 300, (4, 6)))  # updates batch-norm statistics: they must be saved too
    model.freeze_router()
    model.router.index.build(model.router.keys.weight)
    return model.eval()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "exact"])
def test_round_trip_on_a_fresh_backbone(backbone, batch, tiny_llama_dir, tmp_path, kind):
    ids, attn, qmask = batch
    model = trained_model(backbone, kind)
    want = model(ids, attention_mask=attn, question_mask=qmask).logits
    save_mome(model, tmp_path / "ckpt", backbone_name=tiny_llama_dir)
    again = load_mome(tiny_llama_dir, tmp_path / "ckpt").eval()
    assert again.router.index.config.kind == kind
    assert torch.equal(again(ids, attention_mask=attn, question_mask=qmask).logits, want)
    assert list(again.sites) == list(model.sites)


def test_existing_checkpoint_is_not_overwritten(backbone, tmp_path):
    model = trained_model(backbone)
    save_mome(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "experts.safetensors").read_bytes()
    with torch.no_grad():
        model.sites["model.layers.1.mlp.down_proj"].B.weight.add_(1.0)
    with pytest.raises(FileExistsError):
        save_mome(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "experts.safetensors").read_bytes() == before
    save_mome(model, tmp_path / "ckpt", overwrite=True)
    assert (tmp_path / "ckpt" / "experts.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left


def test_truncated_and_corrupt_files_are_refused(backbone, tiny_llama_dir, tmp_path):
    save_mome(trained_model(backbone), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "experts.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_mome(tiny_llama_dir, tmp_path / "ckpt")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="corrupt"):
        load_mome(tiny_llama_dir, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a complete MoME checkpoint"):
        load_mome(tiny_llama_dir, tmp_path / "ckpt")


def test_other_backbones_are_refused(backbone, tiny_gpt2_dir, tmp_path):
    save_mome(trained_model(backbone), tmp_path / "ckpt")
    wide = build_tiny_lm(tmp_path / "wide", arch="llama", hidden=32, heads=4)
    with pytest.raises(ValueError, match="hidden size 64, this one has 32"):
        load_mome(str(wide), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not an nn.Linear of this backbone"):
        load_mome(load_causal_lm(tiny_gpt2_dir), tmp_path / "ckpt")


def test_index_for_other_keys_is_refused(backbone, tiny_llama_dir, tmp_path):
    model = trained_model(backbone)
    save_mome(model, tmp_path / "ckpt")
    meta_path = tmp_path / "ckpt" / "index" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["dim"] = 32
    meta_path.write_text(json.dumps(meta))
    manifest_path = tmp_path / "ckpt" / "manifest.json"  # re-sign, so only the dimension check can object
    manifest = json.loads(manifest_path.read_text())
    import hashlib

    manifest["files"]["index/index.json"] = {
        "bytes": meta_path.stat().st_size,
        "sha256": hashlib.sha256(meta_path.read_bytes()).hexdigest(),
    }
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="index dimension 32 differs from key dimension 64"):
        load_mome(tiny_llama_dir, tmp_path / "ckpt")


def test_lightning_checkpoints_from_before_the_package_move_still_load(tmp_path):
    """hparams pickle MoMEConfig / IndexConfig; files written before memexp/mome/ name the old modules."""
    config = MoMEConfig(num_experts=8, k=2, index=IndexConfig(kind="flat"))
    torch.save({"hyper_parameters": {"mome": config}}, tmp_path / "new.ckpt")
    with zipfile.ZipFile(tmp_path / "new.ckpt") as src, zipfile.ZipFile(tmp_path / "old.ckpt", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"memexp.mome.config\nMoMEConfig" in data and b"memexp.mome.index\nIndexConfig" in data
                data = data.replace(b"memexp.mome.config\nMoMEConfig", b"memexp.mome\nMoMEConfig")
                data = data.replace(b"memexp.mome.index\nIndexConfig", b"memexp.index\nIndexConfig")
            dst.writestr(info, data)
    assert torch.load(tmp_path / "old.ckpt", weights_only=True)["hyper_parameters"]["mome"] == config
