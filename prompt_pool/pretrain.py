"""Offline pretraining recipe for the tiny digits ViT (stand-in for ImageNet-21k weights).

Recipe (deterministic, ~30 s on one CPU thread):
- data: the 30% of scikit-learn's digits reserved by ``load_digits_splits`` (stratified, random_state 0,
  all 10 classes; 539 images). These samples never appear in any Split-Digits task, like a pretraining
  corpus that shares classes but not images with the downstream tasks (the in21k / CIFAR situation);
- augmentation: random shifts of up to 1 pixel and random +-10 degree rotations;
- model: ``vit_tiny_patch16_224`` with ``img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=2,
  num_heads=4`` (68k parameters) + a 10-way linear head, AdamW lr 3e-3, weight decay 0.05, batch 64,
  100 epochs, seed 0. A least-squares linear probe of its frozen [CLS] features reaches 91.5% on the
  Split-Digits test images (all 10 classes at once); depth 4 with lr 1e-3 reached only 85%;
- output: the backbone without its head as ``model.safetensors`` (written atomically) + ``recipe.json``.

Use it as ``checkpoint: tiny:digits`` in a model config (built once into ``$MEMEXP_CACHE``), or
``python -m prompt_pool.pretrain --out <dir>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from decoding.errors import UserError, concise_parser_errors, run_cli
from decoding.run_folder import atomic_file, atomic_write_json
from prompt_pool.datasets import load_digits_splits

DIGITS_VIT_KWARGS: dict[str, Any] = dict(
    img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=2, num_heads=4
)
RECIPE: dict[str, Any] = dict(
    epochs=100,
    lr=3e-3,
    weight_decay=0.05,
    batch_size=64,
    seed=0,
    max_shift=1,
    max_rotation_deg=10.0,
    pretrain_fraction=0.3,
    threads=1,  # built by decoding.provenance.reproducible_build (part of the cache key)
)


def _augment(x: torch.Tensor, g: torch.Generator, max_shift: int, max_deg: float) -> torch.Tensor:
    """Random integer shifts and small rotations of a batch (B, C, H, W)."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * max_deg * torch.pi / 180
    sh = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=g).float() * 2 / x.shape[-1]
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1
    )  # (B,2,3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def pretrain_digits_vit(
    out_dir: str | Path, model_kwargs: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None
) -> Path:
    """Train the tiny ViT on the reserved digits and save its backbone; returns the safetensors path."""
    from safetensors.torch import save as safetensors_bytes
    from tqdm import tqdm

    kw, rc = dict(model_kwargs or DIGITS_VIT_KWARGS), {**RECIPE, **(recipe or {})}
    out_dir = Path(out_dir)
    target = out_dir / "model.safetensors"
    if target.exists():
        raise UserError(f"{target} exists; remove it or choose another --out.")
    pre, _, _ = load_digits_splits(rc["pretrain_fraction"])
    torch.manual_seed(rc["seed"])
    g = torch.Generator().manual_seed(rc["seed"])
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=rc["lr"], weight_decay=rc["weight_decay"])
    model.train()
    bar = tqdm(range(rc["epochs"]), desc=f"pretraining the digits ViT once ({out_dir})", unit="epoch")
    for _ in bar:
        perm = torch.randperm(len(pre), generator=g)
        for i in range(0, len(pre), rc["batch_size"]):
            idx = perm[i : i + rc["batch_size"]]
            x = _augment(pre.x[idx], g, rc["max_shift"], rc["max_rotation_deg"])
            loss = F.cross_entropy(model(x), pre.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        acc = float((model(pre.x).argmax(-1) == pre.y).float().mean())
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    info = {"model_kwargs": kw, "recipe": rc, "train_accuracy": acc, "n_pretrain_images": len(pre)}
    atomic_write_json(out_dir / "recipe.json", info)
    with atomic_file(target, "wb") as fh:  # last: its presence marks a complete build
        fh.write(safetensors_bytes(state))
    return target


def ensure_digits_vit(model_kwargs: dict[str, Any] | None = None) -> Path:
    """Path of the cached pretrained tiny digits ViT for these kwargs, training it on first use."""
    from decoding.provenance import reproducible_build
    from decoding.tiny import tiny_cache_dir

    kw = dict(model_kwargs or DIGITS_VIT_KWARGS)
    key = hashlib.sha256(json.dumps([kw, RECIPE], sort_keys=True).encode()).hexdigest()[:12]
    out = tiny_cache_dir() / f"vit-digits-{key}"
    path = out / "model.safetensors"
    if not path.exists():
        with reproducible_build():  # one thread, and the caller's RNG does not move
            pretrain_digits_vit(out, kw)
    return path


def _main(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    concise_parser_errors(p, prog="prompt_pool.pretrain")
    p.add_argument("--out", required=True, help="output folder (model.safetensors + recipe.json)")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    a = p.parse_args(argv)
    if a.epochs < 1:
        raise UserError(f"--epochs {a.epochs} is invalid: pass --epochs 1 or more (the recipe uses 100).")
    print(pretrain_digits_vit(a.out, recipe={"epochs": a.epochs}))


def main(argv: list[str] | None = None) -> None:
    """``python -m prompt_pool.pretrain --out DIR``: bad input ends with one line (``--debug``: traceback)."""
    run_cli(_main, argv, prog="prompt_pool.pretrain")


if __name__ == "__main__":
    main()
