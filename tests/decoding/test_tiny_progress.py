"""Pretraining a tiny LM (the slow step of a first ``tiny:...&pretrain_steps=N``) shows a progress bar."""

from __future__ import annotations

from decoding.tiny import TinyLMConfig, build_tiny_model, pretrain_tiny_model, train_tokenizer


def test_pretraining_shows_a_progress_bar_with_the_loss(capsys):
    tok = train_tokenizer(vocab=300, seed=0)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    model = build_tiny_model(TinyLMConfig(hidden=32, layers=1, vocab=300), len(tok), ids)
    loss = pretrain_tiny_model(model, tok, steps=3, batch_size=4)
    err = capsys.readouterr().err
    assert "pretraining the tiny LM" in err and "3/3" in err
    assert loss > 0
