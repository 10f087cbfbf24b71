"""What a trained cell did to the rest of the model: real-text NLL, factual MC and general answers.

The measurements of :mod:`memexp.interference`, at a size a study can afford per cell (the defaults: 8
real-text chunks of 128 tokens, 40 factual MC questions, 10 general questions; about a minute per model on
one CPU thread for SmolLM2-135M). The backbone is measured once per run folder
(``interference_before.json``); each cell's trained model after training, compared item by item
(:func:`memexp.interference.compare`: ratios after / before). A memory-expert model is measured through
:class:`memexp.model_view.PromptRoutedLM` (real text and MC prompts have no question end: it routes on the
whole input, as generation does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.errors import UserError
from decoding.run_folder import atomic_write_json

BEFORE_FILE = "interference_before.json"
COLUMNS = ("real_text_nll_ratio", "mc1_ratio", "mc2_ratio", "same_answers")


@dataclass
class InterferenceConfig:
    """Per-cell interference measurement of a study.

    Attributes:
        enabled: measure every cell's trained model (and the backbone once).
        max_chunks: real-text chunks of 128 tokens.
        mc_sample: factual multiple-choice questions (a seeded sample).
        questions: general questions answered greedily (the first ones of the shipped list).
    """

    enabled: bool = False
    max_chunks: int = 8
    mc_sample: int = 40
    questions: int = 10

    def validate(self) -> None:
        """Refuse counts below 1 (UserError naming the setting)."""
        for name in ("max_chunks", "mc_sample", "questions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"interference.{name}={value!r} must be a whole number >= 1, e.g. 8")


def measure_model(model: Any, tokenizer: Any, cfg: InterferenceConfig) -> Any:
    """:func:`memexp.interference.measure` of ``model`` (a memory-expert model through its prompt view)."""
    from memexp.interference import load_questions, measure
    from memexp.model_view import PromptRoutedLM, is_routed

    view = PromptRoutedLM(model) if is_routed(model) else model
    questions = load_questions()[: cfg.questions]
    return measure(view, tokenizer, max_chunks=cfg.max_chunks, mc_sample=cfg.mc_sample, questions=questions)


def backbone_measurement(root: Path, backbone: str, cfg: InterferenceConfig) -> Any:
    """The backbone's measurement, made once and kept in ``root/interference_before.json``."""
    from memexp.interference import Measurement

    path = root / BEFORE_FILE
    if path.exists():
        return Measurement.from_dict(json.loads(path.read_text()))
    from decoding.models import load_causal_lm, load_tokenizer

    before = measure_model(load_causal_lm(backbone), load_tokenizer(backbone), cfg)
    atomic_write_json(path, before.to_dict())
    return before


def interference_columns(before: Any, after: Any) -> dict[str, float]:
    """Ratios after / before of the real-text NLL and MC1 / MC2, and the fraction of identical answers."""
    from memexp.interference import compare

    out = compare(before, after, n_boot=1000)
    return {
        "real_text_nll_ratio": out["real_text_nll"]["ratio"],
        "mc1_ratio": out["mc1"]["ratio"],
        "mc2_ratio": out["mc2"]["ratio"],
        "same_answers": out["identical_answers"]["fraction"],
    }
