"""Frozen ViT wrapper against timm's own forward; prompt placement; per-layer features; errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from decoding.errors import UserError
from prompt_pool.backbone import ViTBackbone, load_state_dict_file


@pytest.fixture
def vit(tiny_vit_kwargs) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(model_kwargs=tiny_vit_kwargs)


def _x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_query_is_timm_pre_logits_cls_and_ignores_train_mode(tiny_vit_kwargs):
    torch.manual_seed(0)
    b = ViTBackbone(model_kwargs={**tiny_vit_kwargs, "drop_rate": 0.5, "proj_drop_rate": 0.5})
    ref = b.vit.forward_head(b.vit.forward_features(_x()), pre_logits=True)
    b.train()  # a frozen backbone stays in eval mode
    assert not b.vit.training
    b.vit.train()  # even if someone flips the inner timm model, the query runs in eval mode
    q = b.query(_x())
    assert not q.requires_grad
    assert torch.allclose(q, ref, atol=1e-6)


def test_backbone_is_frozen(vit):
    assert all(not p.requires_grad for p in vit.parameters())


def test_prompts_go_after_pos_embed_before_blocks(vit):
    x, prompts = _x(), torch.randn(3, 4, 32)
    v = vit.vit
    tok = v.patch_embed(x)
    tok = torch.cat([v.cls_token.expand(3, -1, -1), tok], 1) + v.pos_embed  # CLS + pos-emb
    ref = v.norm(v.blocks(torch.cat([prompts, tok], 1)))
    out = vit.encode(x, prompts)[0]
    assert out.shape == (3, 4 + 1 + 16, 32)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(vit.pool(out, 4, "prompt"), ref[:, :4].mean(1), atol=1e-6)
    assert torch.allclose(vit.pool(out, 4, "cls"), ref[:, 4], atol=1e-6)


def test_l2p_pytorch_layout_is_a_reparameterisation(vit):
    """[T]: prompts after CLS with the CLS pos-emb added; P_T = P_ours - cls_pos gives the same features."""
    x, p_ours = _x(), torch.randn(3, 4, 32)
    v = vit.vit
    cls_pos = v.pos_embed[:, :1]  # (1, 1, D)
    p_t = p_ours - cls_pos
    patches = v.patch_embed(x) + v.pos_embed[:, 1:]
    cls = v.cls_token + cls_pos
    h_t = v.norm(v.blocks(torch.cat([cls.expand(3, -1, -1), p_t + cls_pos, patches], 1)))
    ours = vit.encode(x, p_ours)[0]
    assert torch.allclose(h_t[:, 1:5].mean(1), ours[:, :4].mean(1), atol=1e-5)


def test_per_layer_features_end_with_the_final_features(vit):
    x, prompts = _x(), torch.randn(3, 4, 32)
    layers = vit.layer_features(x, prompts)
    assert layers.shape == (3, 3, 32)  # hidden states 0 (embedding output), 1 and 2 of a 2-block ViT
    assert torch.equal(layers[-1], vit.pool(vit.encode(x, prompts)[0], 4))  # the same operations
    assert torch.allclose(layers[0], vit.pool(vit.vit.norm(torch.cat([prompts, vit.embed(x)], 1)), 4))
    assert torch.allclose(layers[-1], vit.pool(vit.encode(x, prompts)[0], 4), atol=1e-6)
    assert not torch.allclose(layers[0], layers[1])


def test_local_checkpoint_roundtrip_and_hash_pin(tmp_path, tiny_vit_kwargs):
    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=10, **tiny_vit_kwargs)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    b = ViTBackbone(checkpoint=str(path), model_kwargs=tiny_vit_kwargs)
    assert torch.equal(b.vit.pos_embed, src.pos_embed)
    with pytest.raises(ValueError, match="pinned sha256"):
        ViTBackbone(checkpoint=str(path), checkpoint_sha256="0" * 64, model_kwargs=tiny_vit_kwargs)
    with pytest.raises(ValueError, match="does not fit"):
        ViTBackbone(checkpoint=str(path), model_kwargs={**tiny_vit_kwargs, "depth": 3})


def test_bad_sizes_and_names_give_clear_errors(tiny_vit_kwargs, vit):
    with pytest.raises(ValueError, match="not divisible by patch size 3"):
        ViTBackbone(model_kwargs={**tiny_vit_kwargs, "patch_size": 3})
    with pytest.raises(ValueError, match="not a timm ViT"):
        ViTBackbone(name="resnet18")
    with pytest.raises(ValueError, match=r"expects \(B, 1, 8, 8\)"):
        vit.query(torch.rand(2, 1, 16, 16))


def test_hub_weights_offline_point_to_a_local_checkpoint(monkeypatch, tiny_vit_kwargs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="checkpoint=<local .safetensors>"):
        ViTBackbone(name="vit_tiny_patch16_224", pretrained=True, model_kwargs=tiny_vit_kwargs)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_bad_checkpoint_files_are_refused_in_one_line_and_run_no_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"w": torch.zeros(1), "x": _Payload(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a tensor file")
    torch.save([1, 2], tmp_path / "list.pt")
    for name, match in [
        ("evil.pt", "cannot read ViT checkpoint"),
        ("garbage.safetensors", "cannot read ViT checkpoint"),
        ("list.pt", "no state dict of tensors"),
        ("missing.safetensors", "does not exist"),
    ]:
        with pytest.raises(UserError, match=match) as err:
            load_state_dict_file(tmp_path / name)
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_the_digits_vit_build_shows_a_progress_bar_and_loads_back(tmp_path, capsys, tiny_vit_kwargs):
    from prompt_pool.pretrain import pretrain_digits_vit

    path = pretrain_digits_vit(tmp_path / "vit", tiny_vit_kwargs, recipe={"epochs": 2})
    bar = capsys.readouterr().err
    assert "pretraining the digits ViT once" in bar and "2/2" in bar and "loss=" in bar
    assert sorted(p.name for p in (tmp_path / "vit").iterdir()) == ["model.safetensors", "recipe.json"]
    ViTBackbone(checkpoint=str(path), model_kwargs=tiny_vit_kwargs)  # a complete, loadable file
    with pytest.raises(UserError, match="exists; remove it or choose another --out"):
        pretrain_digits_vit(tmp_path / "vit", tiny_vit_kwargs, recipe={"epochs": 2})


def _fake_hub(monkeypatch, tmp_path, tiny_vit_kwargs) -> tuple[str, torch.Tensor]:
    """Serve a seeded tiny ViT's weights as the 'hub file' of any tag (no network); returns its sha256."""
    import hashlib

    import huggingface_hub

    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, **tiny_vit_kwargs)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename: str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest(), src.pos_embed.detach()


def test_pretrained_hub_weights_are_checked_against_a_given_checksum(monkeypatch, tmp_path, tiny_vit_kwargs):
    sha, pos = _fake_hub(monkeypatch, tmp_path, tiny_vit_kwargs)
    name = "vit_tiny_patch16_224.augreg_in21k"
    b = ViTBackbone(name, pretrained=True, checkpoint_sha256=sha, model_kwargs=tiny_vit_kwargs)
    assert torch.equal(b.vit.pos_embed, pos)  # the checked file is the one loaded
    with pytest.raises(UserError, match="does not match the pinned sha256 " + "0" * 64):
        ViTBackbone(name, pretrained=True, checkpoint_sha256="0" * 64, model_kwargs=tiny_vit_kwargs)


def test_a_checksum_needs_a_tag_with_hub_weights(tiny_vit_kwargs):
    with pytest.raises(UserError, match="has no hub weights to pin"):
        ViTBackbone("vit_nonexistent_model", pretrained=True, checkpoint_sha256="0" * 64)


def test_paper_configs_name_the_original_in21k_weights():
    """The paper's ViT-B/16 is Google's ImageNet-21k checkpoint (timm's bare name: augreg2 in21k->in1k)."""
    import yaml

    for name in ("split_cifar100", "five_datasets"):
        cfg = yaml.safe_load(open(f"configs/prompt_pool/{name}.yaml"))["model"]["init_args"]
        assert cfg["backbone"] == "vit_base_patch16_224.orig_in21k" and cfg["pretrained"] is True
        hub = timm.models.get_pretrained_cfg(cfg["backbone"]).hf_hub_id
        assert hub == "timm/vit_base_patch16_224.orig_in21k"
