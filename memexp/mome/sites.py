"""Expert sites: wrap chosen ``nn.Linear`` modules of a backbone in :class:`~memexp.mome.layer.ExpertLinear`.

Sites are chosen by glob patterns over module names (``fnmatch``), e.g.
``"model.layers.6.mlp.down_proj"`` or ``"*.layers.[67].self_attn.v_proj"``. A pattern that matches no
``nn.Linear`` is an error that lists the candidates, so a typo never silently trains nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from decoding.errors import UserError
from memexp.mome.layer import ExpertLinear, RoutingState


def linear_names(model: nn.Module) -> list[str]:
    """Names of all ``nn.Linear`` modules (candidate sites), in module order."""
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def match_sites(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Resolve glob ``patterns`` to ``nn.Linear`` module names.

    Raises:
        ValueError: no patterns, or a pattern that matches no linear layer (the message lists them).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    candidates = linear_names(model)
    if not patterns:
        raise UserError(f"no expert sites given; choose among the linear layers: {_preview(candidates)}")
    chosen: list[str] = []
    for pattern in patterns:
        hits = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise UserError(
                f"expert site pattern {pattern!r} (mome.sites) matches no nn.Linear module; candidates are: "
                f"{_preview(candidates)}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def _preview(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def inject_experts(
    model: nn.Module,
    patterns: Sequence[str],
    num_experts: int,
    rank: int,
    routing: RoutingState,
    sparse: bool = True,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, ExpertLinear]:
    """Replace each matched ``nn.Linear`` by an :class:`ExpertLinear` around it (in place).

    Returns:
        site name -> expert layer, in module order.
    """
    sites = {}
    for name in match_sites(model, patterns):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = ExpertLinear(
            getattr(parent, child), num_experts, rank, routing, sparse=sparse, scale=scale, dtype=dtype
        )
        setattr(parent, child, layer)
        sites[name] = layer
    return sites


def expert_layers(model: nn.Module) -> dict[str, ExpertLinear]:
    """All expert layers inside ``model`` by name (the name of the wrapped linear)."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, ExpertLinear)}


@contextlib.contextmanager
def experts_off(model: nn.Module) -> Iterator[nn.Module]:
    """Switch every expert of ``model`` off: inside, each site computes exactly ``W x``.

    This is the "same model with experts off" reference (DeRa) and the backbone for held-out
    comparisons, without a second copy of the weights.
    """
    states = {id(m.routing): m.routing for m in expert_layers(model).values()}.values()
    before = [s.enabled for s in states]
    for s in states:
        s.enabled = False
    try:
        yield model
    finally:
        for s, flag in zip(states, before):
            s.enabled = flag


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (the ``ModuleList`` of ``num_hidden_layers`` blocks).

    Raises:
        ValueError: no such list is found.
    """
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return mod
    raise ValueError("cannot find the decoder layers (an nn.ModuleList of num_hidden_layers blocks)")


@contextlib.contextmanager
def truncated_layers(model: nn.Module, n: int) -> Iterator[nn.ModuleList]:
    """Inside, the backbone's block list holds only its first ``n`` blocks (the same modules).

    A forward then stops after block ``n - 1`` (HF models loop over this list), e.g. to compute what
    an early block sees without running the rest of the model.
    """
    layers = find_decoder_layers(model)
    name = next(name for name, mod in model.named_modules() if mod is layers)
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, attr, nn.ModuleList(list(layers)[:n]))
    try:
        yield getattr(owner, attr)
    finally:
        setattr(owner, attr, layers)


def layer_of(model: nn.Module, layers: nn.ModuleList, site_name: str) -> int:
    """Index of the block that contains the module ``site_name``."""
    target = model.get_submodule(site_name)
    for i, block in enumerate(layers):
        if any(m is target for m in block.modules()):
            return i
    raise UserError(f"expert site {site_name!r} is not inside a decoder layer; choose a linear inside one")
