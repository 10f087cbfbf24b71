"""Fixtures of the experiments tests: run from the repository root so that configs/ paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_root_offline(monkeypatch):
    """Run each test from the repository root with wandb disabled."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
