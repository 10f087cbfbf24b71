"""Pretraining a tiny LM (the slow step of a first ``tiny:...&pretrain_steps=N``) shows a progress bar."""

from __future__ import annotations

import tqdm
import tqdm.auto

from decoding.tiny import TinyLMConfig, build_tiny_model, pretrain_tiny_model, train_tokenizer


def test_pretraining_shows_a_progress_bar_with_the_loss(capsys, monkeypatch):
    """The bar counts every step and carries the loss (read from the bar, not from its timed redraws)."""
    bars: list[tqdm.tqdm] = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    tok = train_tokenizer(vocab=300, seed=0)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = build_tiny_model(TinyLMConfig(hidden=32, layers=1, vocab=300), len(tok), ids)
    loss = pretrain_tiny_model(model, tok, steps=3, batch_size=4)
    bar = next(b for b in bars if b.desc.startswith("pretraining the tiny LM"))
    assert (bar.n, bar.total) == (3, 3)
    assert "loss=" in bar.postfix
    assert "pretraining the tiny LM" in capsys.readouterr().err  # drawn on stderr
    assert loss > 0
