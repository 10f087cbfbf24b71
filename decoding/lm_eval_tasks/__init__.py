"""lm-evaluation-harness task configs of the shipped factual sets (``decoding/data``): no downloads.

``memexp_factual_mc`` (TruthfulQA MC layout: MC1, MC2, MC3 as ``decoding score --task truthfulqa-mc``) and
``memexp_factual_factor`` (FACTOR layout: accuracy as ``decoding score --task factor``); the tag
``memexp_factual`` names both. ``memexp-lm-eval`` adds :data:`TASKS_DIR` to ``--include_path``; with the
plain ``lm_eval`` name a YAML file by its path in ``--tasks``.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
"""The folder holding the task YAML files (and their ``utils.py``)."""
