"""Frozen timm ViT: the prompt-free query feature, the prompted forward and per-layer pooled features.

Token layout of the prompted forward (docs/algorithms/l2p.md, 'Prompt placement'; the official JAX order)::

    patch_embed -> _pos_embed (CLS + pos-emb) -> patch_drop -> norm_pre      # (B, 1+L, D), frozen
    cat([prompts (B, N*Lp, D), tokens], dim=1)                               # (B, N*Lp+1+L, D)
    blocks -> norm                                                            # same shape
    'prompt' head: mean of h[:, :N*Lp]     'cls' head: h[:, N*Lp]

Prompts are inserted *after* the position embedding and get none of their own. Without position
embeddings self-attention is permutation-equivariant, so [prompts, CLS, patches] (JAX) and
[CLS, prompts, patches] (l2p-pytorch) give the same pooled features; l2p-pytorch additionally adds the
CLS position embedding to every prompt, which is a constant re-parameterisation (P_T = P_ours - cls_pos).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from decoding.errors import UserError, one_line
from prompt_pool.partial_block import block_rows

HeadType = Literal["prompt", "cls"]


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (used to pin checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_weights_file(name: str) -> str:
    """The local path of timm's hub weights for the tagged model ``name`` (downloaded once into the HF cache).

    Raises:
        UserError: ``name`` has no hub weights, or they cannot be fetched (offline, empty cache).
    """
    from huggingface_hub import hf_hub_download

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown architecture or tag
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(
            f"timm model {name!r} has no hub weights to pin by checksum; name a tag with hub weights "
            "(e.g. vit_base_patch16_224.orig_in21k) or pass checkpoint=<local .safetensors>."
        )
    try:
        return hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors")
    except Exception as err:  # no network and nothing cached
        raise UserError(
            f"could not fetch the hub weights of {name!r} ({cfg.hf_hub_id}): {one_line(str(err))}; offline, "
            "pass checkpoint=<local .safetensors> and pretrained=false."
        ) from err


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict safely: safetensors, or a torch file with ``weights_only=True`` (no code runs).

    Raises:
        UserError: the file is missing or is not a readable tensor file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"ViT checkpoint {str(path)!r} does not exist; pass --model.init_args.checkpoint <a local "
            ".safetensors file> or tiny:digits."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, foreign or code-carrying files: one clear line
        raise UserError(
            f"cannot read ViT checkpoint {str(path)!r} ({type(err).__name__}: {one_line(str(err))[:160]}); "
            "pass a .safetensors file or a torch state dict of tensors."
        ) from None
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(
            f"ViT checkpoint {str(path)!r} holds no state dict of tensors; pass a .safetensors file."
        )
    return obj


class ViTBackbone(nn.Module):
    """A timm ``vit_*`` model (frozen by default) that can run with prompt tokens prepended.

    Args:
        name: any timm VisionTransformer name (``vit_tiny_patch16_224``, ``vit_base_patch16_224``...).
        pretrained: load timm's hub weights for ``name`` (a timm tag such as
            ``vit_base_patch16_224.orig_in21k``; needs network or a filled HF cache). With
            ``checkpoint_sha256`` the downloaded file is checked before it is loaded.
        checkpoint: local ``.safetensors`` (or ``.pt``/``.pth``) state dict, e.g. from
            ``prompt_pool.pretrain``; its classifier head, if any, is ignored. ``tiny:digits`` builds
            (once, cached) the tiny ViT pretrained on the reserved digits (``prompt_pool.pretrain``).
        checkpoint_sha256: if given, the SHA-256 of the checkpoint (or of the hub file, with
            ``pretrained``) must match: weights pinned by hash.
        model_kwargs: extra ``timm.create_model`` arguments (``img_size``, ``patch_size``, ``in_chans``,
            ``embed_dim``, ``depth``, ``num_heads``...). The classifier head is always dropped.
        frozen: freeze every weight and keep eval mode (L2P); False for the whole-model fine-tuning baselines.
    """

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        pretrained: bool = False,
        checkpoint: str | None = None,
        checkpoint_sha256: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if not name.startswith("vit_"):
            raise UserError(
                f"backbone {name!r} is not a timm ViT; pass --model.init_args.backbone vit_tiny_patch16_224 "
                "(or another 'vit_*' name)."
            )
        img, patch = kwargs.get("img_size"), kwargs.get("patch_size")
        if img is not None and patch is not None and int(img) % int(patch) != 0:
            raise UserError(
                f"image size {img} is not divisible by patch size {patch}; choose img_size a multiple of "
                f"patch_size (e.g. img_size={int(img) // int(patch) * int(patch) or int(patch)})."
            )
        kwargs["num_classes"] = 0
        if pretrained and checkpoint is None and checkpoint_sha256 is not None:
            checkpoint = hub_weights_file(name)  # checked below like a local file
        try:
            vit = timm.create_model(name, pretrained=pretrained and checkpoint is None, **kwargs)
        except Exception as err:  # network-less hub download, unknown name, bad kwargs
            raise UserError(
                f"could not build timm model {name!r} (pretrained={pretrained}): {err}. Offline, pass "
                "checkpoint=<local .safetensors> instead of pretrained=True."
            ) from err
        ph, pw = vit.patch_embed.patch_size
        ih, iw = vit.patch_embed.img_size
        if ih % ph or iw % pw:
            raise UserError(f"image size {(ih, iw)} is not divisible by patch size {(ph, pw)}.")
        if checkpoint == "tiny:digits":
            from prompt_pool.pretrain import ensure_digits_vit

            checkpoint = str(ensure_digits_vit(model_kwargs))
        if checkpoint is not None:
            if checkpoint_sha256 is not None and sha256_of(checkpoint) != checkpoint_sha256:
                raise UserError(
                    f"checkpoint {checkpoint!r} does not match the pinned sha256 {checkpoint_sha256}; use "
                    "the pinned file or update --model.init_args.checkpoint_sha256."
                )
            state = {k: v for k, v in load_state_dict_file(checkpoint).items() if not k.startswith("head.")}
            missing, unexpected = vit.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise UserError(
                    f"checkpoint {checkpoint!r} does not fit {name} with {model_kwargs}: "
                    f"missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}. Build the backbone with the kwargs it was saved with."
                )
        if vit.num_reg_tokens or getattr(vit, "global_pool", "token") != "token":
            raise UserError(f"{name}: only CLS-token ViTs without register tokens are supported.")
        self.frozen = frozen
        self.vit = vit.requires_grad_(not frozen).train(not frozen)
        self.embed_dim: int = vit.embed_dim
        self.depth: int = len(vit.blocks)
        self.img_size: tuple[int, int] = (ih, iw)
        self.in_chans: int = vit.patch_embed.proj.in_channels

    def unfreeze(self) -> ViTBackbone:
        """Make every weight trainable and allow train mode (whole-model fine-tuning baselines)."""
        self.frozen = False
        self.vit.requires_grad_(True).train(self.training)
        return self

    def train(self, mode: bool = True) -> ViTBackbone:
        """A frozen backbone stays in eval mode whatever the caller asks (as [T] re-applies each epoch)."""
        return super().train(mode and not self.frozen)

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when images do not match the backbone's size or channels."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(
                f"images of shape {tuple(x.shape)} do not fit the backbone (expects (B, {self.in_chans}, "
                f"{self.img_size[0]}, {self.img_size[1]})); set model_kwargs img_size/in_chans to the data."
            )

    def embed(self, x: Tensor) -> Tensor:
        """Frozen token embedding: patches + CLS + position embedding.  (B, C, H, W) -> (B, 1+L, D)."""
        self.check_input(x)
        v = self.vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))

    @torch.no_grad()
    def query(self, x: Tensor) -> Tensor:
        """L2P query q(x): [CLS] after the final norm, no prompts, eval mode, no grad.  -> (B, D)."""
        if not self.vit.training:  # a frozen backbone: no mode switch (it walks every module)
            return self.pooled_features(x, None, "cls")[-1]
        self.vit.eval()
        try:
            return self.pooled_features(x, None, "cls")[-1]
        finally:
            self.vit.train(True)

    def encode(self, x: Tensor, prompts: Tensor | None = None, all_layers: bool = False) -> list[Tensor]:
        """Run the (prompted) encoder.

        Args:
            x: images (B, C, H, W).
            prompts: (B, P, D) tokens prepended after the position embedding, or None.
            all_layers: return every hidden state, each passed through the final norm (a "logit lens"
                for a classifier): the embedding output (hidden state 0), the output of every block
                (1..N), N + 1 in all, instead of the last one only.

        Returns:
            A list of normed hidden states (B, P+1+L, D): N + 1 if ``all_layers``, else one. The last
            entry is computed by the same operations either way (so it is bit-identical).
        """
        tok = self.embed(x)  # (B, 1+L, D)
        h = tok if prompts is None else torch.cat([prompts.to(tok.dtype), tok], dim=1)  # (B, P+1+L, D)
        if not all_layers:
            return [self.vit.norm(self.vit.blocks(h))]
        outs = [self.vit.norm(h)]
        for blk in self.vit.blocks:  # what nn.Sequential does, one block at a time
            h = blk(h)
            outs.append(self.vit.norm(h))
        return outs

    @staticmethod
    def pool(h: Tensor, num_prompt_tokens: int, head_type: HeadType = "prompt") -> Tensor:
        """Pool encoder output (B, P+1+L, D) -> (B, D): prompt-token mean or the CLS token."""
        start, stop = ViTBackbone.pooled_rows(num_prompt_tokens, head_type)
        return ViTBackbone.reduce_rows(h[:, start:stop], head_type)

    @staticmethod
    def reduce_rows(rows: Tensor, head_type: HeadType) -> Tensor:
        """The pooled rows (B, R, D) -> (B, D): their mean ('prompt') or the one [CLS] row ('cls')."""
        return rows.mean(dim=1) if head_type == "prompt" else rows[:, 0]

    def pooled_features(
        self,
        x: Tensor,
        prompts: Tensor | None = None,
        head_type: HeadType = "prompt",
        all_layers: bool = False,
    ) -> list[Tensor]:
        """Pooled features of the (prompted) encoder, the last block run for the pooled rows only.

        Equal to ``[pool(h, P, head_type) for h in encode(x, prompts, all_layers)]`` up to float rounding
        (:mod:`prompt_pool.partial_block`); the last entry is computed by the same operations either way.

        Args:
            x: images (B, C, H, W).
            prompts: (B, P, D) tokens prepended after the position embedding, or None.
            head_type: ``prompt`` (mean of the P prompt rows) or ``cls`` (the [CLS] row, row P).
            all_layers: one feature per hidden state 0..N (a "logit lens"), else the last one only.

        Returns:
            [(B, D)] * (N + 1) if ``all_layers``, else [(B, D)].
        """
        p = 0 if prompts is None else prompts.shape[1]
        start, stop = self.pooled_rows(p, head_type)
        tok = self.embed(x)  # (B, 1+L, D)
        h = tok if prompts is None else torch.cat([prompts.to(tok.dtype), tok], dim=1)  # (B, P+1+L, D)
        *early, last = self.vit.blocks
        feats = []
        if all_layers:
            feats.append(self.pool(self.vit.norm(h), p, head_type))
        for blk in early:
            h = blk(h)
            if all_layers:
                feats.append(self.pool(self.vit.norm(h), p, head_type))
        rows = self.vit.norm(block_rows(last, h, start, stop))  # (B, R, D)
        feats.append(self.reduce_rows(rows, head_type))
        return feats

    @staticmethod
    def pooled_rows(num_prompt_tokens: int, head_type: HeadType) -> tuple[int, int]:
        """The rows [start, stop) a head pools from: the prompt rows, or the [CLS] row after them."""
        if head_type == "prompt":
            if num_prompt_tokens == 0:
                raise ValueError(
                    "head_type='prompt' needs prompt tokens; use head_type='cls' without prompts."
                )
            return 0, num_prompt_tokens
        if head_type == "cls":
            return num_prompt_tokens, num_prompt_tokens + 1
        raise ValueError(f"unknown head_type {head_type!r}; use 'prompt' or 'cls'.")

    def layer_features(
        self, x: Tensor, prompts: Tensor | None = None, head_type: HeadType = "prompt"
    ) -> Tensor:
        """Per-layer pooled features (hidden states 0..N, see :meth:`pooled_features`).  -> (N + 1, B, D)."""
        return torch.stack(self.pooled_features(x, prompts, head_type, all_layers=True))
