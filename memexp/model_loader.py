"""``decoding``'s loader for MoME folders: ``decoding generate --model <run>/mome`` loads backbone + experts.

A MoME folder (:mod:`memexp.mome.checkpoint`) holds the experts, keys, router and index, and names its
backbone (``config.json``: ``backbone.name_or_path``) instead of copying it. :data:`MOME_FOLDER` is
registered with :mod:`decoding.models` through the ``decoding.model_loaders`` entry point in
``pyproject.toml``, so ``decoding`` loads such folders without importing memexp::

    from decoding.models import load_causal_lm, load_tokenizer
    model = load_causal_lm("runs/mome_demo/mome")      # backbone + experts, routed on the prompt
    tok = load_tokenizer("runs/mome_demo/mome")        # the backbone's tokenizer

This module imports only the standard library at import time: ``decoding`` asks every registered
loader whether it claims a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from decoding.errors import UserError

FORMAT_PREFIX = "memexp-mome/"


class MoMEFolderLoader:
    """Loads a MoME folder as an HF-style causal LM (:class:`memexp.model_view.RoutedLM`)."""

    def claims(self, path: Path) -> bool:
        """Whether ``path`` holds a MoME folder (``config.json`` with a ``memexp-mome/`` format)."""
        try:
            config = json.loads((Path(path) / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and str(config.get("format", "")).startswith(FORMAT_PREFIX)

    def tokenizer_source(self, path: Path) -> str:
        """The backbone's name: MoME folders keep no tokenizer of their own."""
        return self._backbone(Path(path))

    def load(self, path: Path, dtype=None, device=None):
        """Backbone (by its recorded name) + experts, router and index, seen through
        :meth:`memexp.mome.MoMEModel.as_causal_lm`.

        Raises:
            UserError: a folder that names no backbone, or whose files or backbone do not match.
        """
        from decoding.models import load_causal_lm
        from memexp.mome.checkpoint import load_mome

        backbone = load_causal_lm(self._backbone(Path(path)), dtype=dtype)
        model = load_mome(backbone, path)
        if device is not None:
            model.to(device)
        return model.as_causal_lm()

    @staticmethod
    def _backbone(path: Path) -> str:
        config = json.loads((path / "config.json").read_text())
        name = (config.get("backbone") or {}).get("name_or_path")
        if not name:
            raise UserError(
                f"the MoME folder {str(path)!r} does not name its backbone; load it in Python with "
                "memexp.mome.checkpoint.load_mome(backbone, folder)"
            )
        return str(name)


MOME_FOLDER = MoMEFolderLoader()
