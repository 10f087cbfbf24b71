"""Fixtures for the MoME tests: a fresh tiny Llama per test (MoME wraps the backbone in place)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def backbone(tiny_llama_dir):
    """A fresh copy of the session's tiny Llama (2 layers, hidden 64), in eval mode."""
    from decoding.models import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(tiny_llama_dir).eval()


@pytest.fixture
def batch():
    """Three left-padded-free prompts of length 9 over the tiny vocabulary, with question masks."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 9), generator=g)
    attn = torch.ones_like(ids)
    qmask = torch.zeros_like(ids, dtype=torch.bool)
    qmask[:, :5] = True
    return ids, attn, qmask
