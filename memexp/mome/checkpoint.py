"""Save and load a MoME (experts, keys, router, index, config) as one folder on top of a backbone.

Layout (the backbone is referenced, never copied)::

    ckpt/
      config.json           MoMEConfig + what the backbone must look like (hidden size, site shapes)
      experts.safetensors   "<site>.A" (E, r*d_in), "<site>.B" (E, r*d_out) for every site
      router.safetensors    query projection, query batch-norm statistics, keys (E, d_k)
      index/                index.json (+ index.faiss) with the fingerprint of the keys it was built on
      manifest.json         size and sha256 of every file above, and the backbone's weight
                            fingerprint (written last)

Writing goes to a temporary sibling folder that replaces the target in one ``os.replace``, so a crash
leaves either the old checkpoint or the new one, never half of one. Loading checks the manifest first
(truncated or corrupt files are refused), then the backbone (hidden size, site names and shapes, and
its weights: a same-shape backbone with other weights is refused unless ``allow_other_backbone=True``),
then the index against the keys (dimension; stale fingerprint -> rebuilt or refused per its ``on_stale``)::

    mome = load_mome("tiny:llama", "runs/mome/ckpt")     # one call: backbone + experts + router + index
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from decoding.errors import UserError
from decoding.run_folder import atomic_write_dir
from memexp.mome.config import MoMEConfig
from memexp.mome.index import KeyIndex
from memexp.mome.layer import ExpertLinear
from memexp.mome.model import MoMEModel

FORMAT = "memexp-mome/1"
FILES = ("config.json", "experts.safetensors", "router.safetensors")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def backbone_signature(model: MoMEModel) -> dict:
    """What a backbone must match for these experts: type, hidden size, and each site's shape."""
    cfg = model.backbone.config
    return {
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "sites": {name: [s.in_features, s.out_features] for name, s in model.sites.items()},
    }


def backbone_fingerprint(backbone: nn.Module, samples: int = 64) -> str:
    """sha256 over every backbone weight's name, shape and ``samples`` evenly spaced values.

    Expert tables are skipped and an expert site's wrapped linear counts under its own name, so the
    fingerprint is the same before and after :class:`~memexp.mome.MoMEModel` wraps the backbone. Values
    are rounded to bfloat16, so the same weights loaded as float32 or bfloat16 agree. Cheap: one small
    gather per tensor.
    """
    sites = {name for name, mod in backbone.named_modules() if isinstance(mod, ExpertLinear)}
    digest = hashlib.sha256()
    for name, param in backbone.named_parameters():
        site = next((s for s in sites if name.startswith(s + ".")), None)
        if site is not None:
            rest = name[len(site) + 1 :]
            if not rest.startswith("base."):
                continue  # an expert table, not a backbone weight
            name = f"{site}.{rest.removeprefix('base.')}"
        flat = param.detach().reshape(-1)
        count = min(samples, flat.numel())
        index = torch.arange(count) * (flat.numel() - 1) // max(count - 1, 1)  # exact integers, no float
        values = flat[index.to(flat.device)].to(torch.bfloat16).float().cpu()
        digest.update(f"{name}:{tuple(param.shape)}:".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def save_mome(
    model: MoMEModel, directory: str | os.PathLike, overwrite: bool = False, backbone_name: str | None = None
) -> Path:
    """Write the MoME part of ``model`` atomically into ``directory``.

    Args:
        model: the model to save.
        directory: target folder.
        overwrite: replace an existing checkpoint (atomically); otherwise an existing folder is an error.
        backbone_name: how to find the backbone again (path, hub id or ``tiny:`` name), recorded only.

    Raises:
        FileExistsError: ``directory`` exists and ``overwrite`` is False.
    """
    out = Path(directory)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True or choose a new folder")

    def fill(tmp: Path) -> None:
        config = {
            "format": FORMAT,
            "mome": asdict(model.config),
            "query_layer": model.query_layer,
            "backbone": {**backbone_signature(model), "name_or_path": backbone_name},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        experts = {}
        for name, site in model.sites.items():
            experts[f"{name}.A"] = site.A.weight.detach().contiguous()
            experts[f"{name}.B"] = site.B.weight.detach().contiguous()
        save_file(experts, str(tmp / "experts.safetensors"))
        router = {k: v.detach().contiguous() for k, v in model.router.state_dict().items()}
        save_file(router, str(tmp / "router.safetensors"))
        files = list(FILES)
        if model.router.index.fingerprint is not None:
            (tmp / "index").mkdir()
            model.router.index.write_into(tmp / "index")
            files += [f"index/{p.name}" for p in sorted((tmp / "index").iterdir())]
        manifest = {
            "format": FORMAT,
            "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files},
            "backbone_fingerprint": backbone_fingerprint(model.backbone),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))

    atomic_write_dir(out, fill)
    return out


def verify_manifest(folder: Path) -> tuple[dict, dict]:
    """Check every file's size and sha256 against ``manifest.json``.

    Returns:
        the parsed ``config.json`` and ``manifest.json``.

    Raises:
        UserError: missing, truncated or corrupt files (the message names the file).
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{folder} is not a complete MoME checkpoint (manifest.json unreadable: {err}); "
            "it was not written by save_mome or was cut short: save it again"
        ) from None
    for name, entry in files.items():
        path = folder / name
        if not path.exists():
            raise UserError(f"checkpoint file {path} is missing; the checkpoint is incomplete: save it again")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise UserError(
                f"checkpoint file {path} is truncated or altered ({size} bytes, manifest says "
                f"{entry['bytes']}): save the checkpoint again"
            )
        if _sha256(path) != entry["sha256"]:
            raise UserError(f"checkpoint file {path} is corrupt (sha256 mismatch): save the checkpoint again")
    return json.loads((folder / "config.json").read_text()), manifest


def check_backbone(backbone: nn.Module, saved: dict) -> None:
    """Refuse a backbone whose hidden size or expert-site modules differ from the saved ones."""
    hidden = backbone.config.hidden_size
    if hidden != saved["hidden_size"]:
        raise UserError(
            f"these experts were trained on a backbone with hidden size {saved['hidden_size']}, "
            f"this one has {hidden}: load them onto the backbone they were trained with "
            f"({saved.get('name_or_path')!r})"
        )
    modules = dict(backbone.named_modules())
    for name, (d_in, d_out) in saved["sites"].items():
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            raise UserError(
                f"expert site {name!r} is not an nn.Linear of this backbone; these experts belong "
                f"to another architecture ({saved.get('name_or_path')!r})"
            )
        if (mod.in_features, mod.out_features) != (d_in, d_out):
            raise UserError(
                f"expert site {name!r} has shape {(mod.in_features, mod.out_features)} here but "
                f"{(d_in, d_out)} in the checkpoint: wrong backbone"
            )


def check_backbone_weights(backbone: nn.Module, manifest: dict, folder: Path, name: str | None) -> None:
    """Refuse a same-shape backbone whose weights differ from those the experts were trained on."""
    saved = manifest.get("backbone_fingerprint")
    if saved is None:
        raise UserError(
            f"{folder} records no backbone fingerprint (written by an older memexp), so the backbone's "
            "weights cannot be checked; save it again, or pass allow_other_backbone=True to load it anyway"
        )
    here = backbone_fingerprint(backbone)
    if here != saved:
        raise UserError(
            f"the experts in {folder} were trained on a backbone with other weights (fingerprint "
            f"{saved[:12]} there, {here[:12]} here; trained on {name!r}): load them onto that backbone, or "
            "pass allow_other_backbone=True to load them anyway"
        )


def load_mome(
    backbone: nn.Module | str, directory: str | os.PathLike, allow_other_backbone: bool = False
) -> MoMEModel:
    """Load a checkpoint written by :func:`save_mome` on top of ``backbone`` (a model or a name for
    :func:`decoding.models.load_causal_lm`).

    Args:
        backbone: the backbone the experts were trained on (or its name).
        directory: the MoME folder.
        allow_other_backbone: load onto a same-shape backbone whose weights differ from the recorded
            fingerprint (the experts then add to weights they were not trained with).

    Raises:
        UserError: corrupt/truncated files, a different backbone, or an index that does not fit the keys.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise UserError(f"no MoME checkpoint folder at {folder}; pass the 'mome' folder of a memexp run")
    saved, manifest = verify_manifest(folder)
    if saved.get("format") != FORMAT:
        raise UserError(f"{folder} has format {saved.get('format')!r}, expected {FORMAT!r}: save it again")
    if isinstance(backbone, str):
        from decoding.models import load_causal_lm

        backbone = load_causal_lm(backbone)
    check_backbone(backbone, saved["backbone"])
    if not allow_other_backbone:
        check_backbone_weights(backbone, manifest, folder, saved["backbone"].get("name_or_path"))
    cfg = dict(saved["mome"])
    cfg["sites"] = list(saved["backbone"]["sites"])  # exact names, not the original patterns
    cfg["query_layer"] = saved["query_layer"]
    model = MoMEModel(backbone, MoMEConfig(**cfg))
    try:
        experts = load_file(str(folder / "experts.safetensors"))
        router = load_file(str(folder / "router.safetensors"))
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read the tensors in {folder} ({err}): save the checkpoint again") from None
    for name, site in model.sites.items():
        site.A.weight.data.copy_(experts[f"{name}.A"])
        site.B.weight.data.copy_(experts[f"{name}.B"])
    model.router.load_state_dict(router)
    if (folder / "index" / "index.json").exists():
        model.router.index = KeyIndex.load(folder / "index", model.router.keys.weight)
    return model
