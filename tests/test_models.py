"""Tiny offline models load through plain from_pretrained; loading errors name the fix."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decoding.models import check_tokenizer_fits, load_causal_lm, load_tokenizer, resolve_model_path
from decoding.tiny import build_tiny_lm, parse_tiny_name


@pytest.mark.parametrize("fixture, tied", [("tiny_llama_dir", False), ("tiny_gpt2_dir", True)])
def test_tiny_models_load_with_auto_classes(fixture, tied, request):
    path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.tie_word_embeddings is tied
    same = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same is tied
    ids = tok("Q: What is the code of the river?\nA: X7K2", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "Q: What is the code of the river?\nA: X7K2"
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tiny_build_is_seeded(tmp_path):
    a = load_causal_lm(build_tiny_lm(tmp_path / "a", seed=3))
    b = load_causal_lm(build_tiny_lm(tmp_path / "b", seed=3))
    c = load_causal_lm(build_tiny_lm(tmp_path / "c", seed=4))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_tiny_names_resolve_and_cache():
    path = resolve_model_path("tiny:gpt2?hidden=32&layers=3")
    assert resolve_model_path("tiny:gpt2?hidden=32&layers=3") == path
    model = load_causal_lm("tiny:gpt2?hidden=32&layers=3")
    assert model.config.n_layer == 3 and model.config.n_embd == 32
    with pytest.raises(ValueError, match="unknown tiny model option 'width'"):
        parse_tiny_name("tiny:llama?width=3")
    with pytest.raises(ValueError, match="unknown tiny arch"):
        parse_tiny_name("tiny:bert")


def test_unknown_model_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a folder holding config.json"):
        load_causal_lm(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="could not load a causal LM"):
        load_causal_lm(str(empty))
    with pytest.raises(OSError, match="could not load a tokenizer"):
        load_tokenizer(str(empty))


def test_tokenizer_that_does_not_fit_is_refused(tiny_llama_dir, tiny_gpt2_dir):
    small = load_causal_lm("tiny:llama?vocab=300")
    with pytest.raises(ValueError, match="tokenizer has 512 ids but the model's embedding has only 300"):
        check_tokenizer_fits(load_tokenizer(tiny_llama_dir), small)
    check_tokenizer_fits(load_tokenizer(tiny_gpt2_dir), load_causal_lm(tiny_gpt2_dir))


def test_pretrained_tiny_model_learns_the_answer_format(tmp_path):
    from decoding.tiny import pretrain_corpus

    kw = dict(hidden=32, layers=1, vocab=300, seed=2)
    random_dir = build_tiny_lm(tmp_path / "random", **kw)
    trained_dir = build_tiny_lm(tmp_path / "trained", pretrain_steps=60, **kw)
    again_dir = build_tiny_lm(tmp_path / "again", pretrain_steps=60, **kw)
    tok = load_tokenizer(trained_dir)
    held_out = [line + tok.eos_token for line in pretrain_corpus(seed=7, n_lines=16)]  # another seed
    batch = tok(held_out, return_tensors="pt", padding="longest", padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def loss(path) -> float:
        with torch.no_grad():
            return load_causal_lm(path)(**batch, labels=labels).loss.item()

    assert loss(trained_dir) < loss(random_dir) - 1.0  # nats per token, on lines it never saw
    for pa, pb in zip(load_causal_lm(trained_dir).parameters(), load_causal_lm(again_dir).parameters()):
        assert torch.equal(pa, pb)  # seeded: the same recipe gives the same weights
    with pytest.raises(ValueError, match="pretrain_steps=-1"):
        parse_tiny_name("tiny:llama?pretrain_steps=-1")


def test_offline_builds_do_not_depend_on_the_callers_thread_count(tmp_path, monkeypatch):
    """ensure_tiny_lm builds in one thread: a caller with 1 or 2 threads gets the same weights."""
    from decoding.provenance import file_sha256
    from decoding.tiny import ensure_tiny_lm

    name = "tiny:llama?hidden=32&layers=1&vocab=300&pretrain_steps=30"
    threads = torch.get_num_threads()
    hashes = []
    for n in (1, 2):
        monkeypatch.setenv("MEMEXP_CACHE", str(tmp_path / f"cache{n}"))
        torch.set_num_threads(n)
        state = torch.get_rng_state()
        try:
            hashes.append(file_sha256(ensure_tiny_lm(name) / "model.safetensors"))
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG did not move
    assert hashes[0] == hashes[1]


class _MarkerLoader:
    """A loader for folders holding ``marker.txt`` (the name of the model they stand for)."""

    def claims(self, path):
        return (path / "marker.txt").is_file()

    def load(self, path, dtype=None, device=None):
        return load_causal_lm((path / "marker.txt").read_text(), dtype=dtype, device=device)

    def tokenizer_source(self, path):
        return (path / "marker.txt").read_text()


def test_registered_loaders_read_folders_from_pretrained_cannot(tiny_llama_dir, tmp_path, monkeypatch):
    from decoding import models

    monkeypatch.setattr(models, "_LOADERS", {})
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "marker.txt").write_text(tiny_llama_dir)
    with pytest.raises(OSError, match="could not load"):
        load_causal_lm(folder)
    models.register_model_loader("marker", _MarkerLoader())
    assert models.loader_for(folder) is not None and models.loader_for(tiny_llama_dir) is None
    model = load_causal_lm(folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert load_tokenizer(folder).get_vocab() == load_tokenizer(tiny_llama_dir).get_vocab()
