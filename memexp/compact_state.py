"""Optimizer state without its all-zero rows: lossless, and much smaller for sparse expert tables.

``SparseAdam`` keeps two dense moment tensors the size of every expert table, but only the rows of experts
that were ever selected are non-zero (and an embedding's rows of tokens never seen stay zero under AdamW).
In a checkpoint each such tensor ``(R, ...)`` with at least :data:`MIN_ZERO_FRACTION` of its rows all-zero
is stored as its non-zero rows and their indices::

    {"__zero_rows__": True, "shape": [R, ...], "rows": (n,) int64, "values": (n, ...)}

:func:`expand_optimizer_states` rebuilds the dense tensors bit for bit (a row counts as zero only when all
its bits are zero, so ``-0.0`` rows are kept), so a resumed run continues exactly. The checkpoint holds
tensors, lists and plain values only, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_ZERO_FRACTION = 0.25  # compact a tensor only when at least this share of its rows is zero
MARK = "__zero_rows__"
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero_rows(t: torch.Tensor) -> torch.Tensor:
    """``(n,)`` indices of the rows of ``t`` ``(R, ...)`` with any non-zero bit."""
    flat = t.detach().reshape(t.shape[0], -1)  # (R, C)
    if t.is_floating_point() or t.is_complex():
        flat = flat.contiguous().view(_INT_OF_SIZE[t.element_size()])  # bits: -0.0 is not zero
    return flat.ne(0).any(1).nonzero().flatten()


def compact(value: Any) -> Any:
    """``value`` with every large, mostly-zero-rows tensor in it (dicts, lists) replaced by its rows."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(compact(v) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] >= 8:
        rows = nonzero_rows(value)
        if rows.numel() <= (1 - MIN_ZERO_FRACTION) * value.shape[0]:
            return {MARK: True, "shape": list(value.shape), "rows": rows, "values": value[rows]}
    return value


def expand(value: Any) -> Any:
    """Inverse of :func:`compact`."""
    if isinstance(value, dict):
        if value.get(MARK) is True:
            values = value["values"]
            out = torch.zeros(value["shape"], dtype=values.dtype, device=values.device)
            return out.index_copy_(0, value["rows"].to(values.device), values)
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(expand(v) for v in value)
    return value


def compact_optimizer_states(checkpoint: dict) -> None:
    """Replace ``checkpoint["optimizer_states"]`` by a compacted copy (the live state is untouched)."""
    if "optimizer_states" in checkpoint:
        checkpoint["optimizer_states"] = [
            {**s, "state": compact(s["state"])} for s in checkpoint["optimizer_states"]
        ]


def expand_optimizer_states(checkpoint: dict) -> None:
    """Undo :func:`compact_optimizer_states` in place, before Lightning restores the optimizers."""
    if "optimizer_states" in checkpoint:
        checkpoint["optimizer_states"] = [expand(s) for s in checkpoint["optimizer_states"]]
