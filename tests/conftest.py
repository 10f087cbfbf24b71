"""Shared fixtures: offline environment and tiny models built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory):
    """Build ``tiny:`` models into a per-session folder, never into the user's cache."""
    os.environ["MEMEXP_CACHE"] = str(tmp_path_factory.mktemp("memexp_cache"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A seeded tiny Llama (untied embeddings, 2 layers, hidden 64, vocab 512) saved with save_pretrained."""
    from decoding.tiny import build_tiny_lm

    return str(build_tiny_lm(tmp_path_factory.mktemp("models") / "llama", arch="llama", seed=0))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A seeded tiny GPT-2 (tied embeddings, 2 layers, hidden 64, vocab 512)."""
    from decoding.tiny import build_tiny_lm

    return str(build_tiny_lm(tmp_path_factory.mktemp("models") / "gpt2", arch="gpt2", seed=0))
