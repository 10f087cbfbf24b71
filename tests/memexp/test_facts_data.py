"""Tokenised fact batches: the loss mask covers exactly answer + eos; untokenisable answers are refused."""

from __future__ import annotations

import pytest
import torch

from decoding.models import load_tokenizer
from memexp.data import IGNORE_INDEX, FactsDataModule, collate_examples, tokenize_fact
from memexp.facts import Fact, save_facts


def test_labels_cover_answer_and_eos_only(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    facts = [Fact(5, "What is the code of the red fox?", "AB12"), Fact(9, "Who?", "XYZ0QQ7")]
    examples = [tokenize_fact(f, tok, "Q: {question}\nA:") for f in facts]
    batch = collate_examples(examples, tok.pad_token_id)
    assert batch["fact_ids"].tolist() == [5, 9]
    for row, fact in enumerate(facts):
        labels = batch["labels"][row]
        answer = labels[labels != IGNORE_INDEX]
        assert tok.decode(answer[:-1]).strip() == fact.answer
        assert answer[-1].item() == tok.eos_token_id
        prompt_len = int(batch["prompt_mask"][row].sum())
        prompt = tok.decode(batch["input_ids"][row, :prompt_len])
        assert prompt == f"Q: {fact.question}\nA:"
        first_label = int((labels != IGNORE_INDEX).nonzero()[0])
        assert first_label == prompt_len  # the answer starts right after the prompt
        n = int(batch["attention_mask"][row].sum())
        assert (labels[n:] == IGNORE_INDEX).all() and (batch["input_ids"][row, n:] == tok.pad_token_id).all()


def _lossy_tokenizer(tmp_path):
    """A word-level tokenizer that drops digits and knows only a few words."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<pad>": 2, "Q:": 3, "A:": 4, "who?": 5, "bob": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex("[0-9]"), ""), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="<pad>"
    )


def test_answer_that_tokenizes_to_nothing_is_refused(tmp_path):
    tok = _lossy_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="fact id 3 .* tokenizes to nothing"):
        tokenize_fact(Fact(3, "who?", "1234"), tok, "Q: {question} A:")


def test_answer_that_does_not_roundtrip_is_refused(tmp_path):
    tok = _lossy_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="does not survive tokenization"):
        tokenize_fact(Fact(4, "who?", "Alice"), tok, "Q: {question} A:")


def test_datamodule_splits_heldout_from_a_file(tmp_path, tiny_llama_dir):
    facts = [Fact(i, f"What is item {i}?", f"V{i}") for i in range(10)]
    save_facts(facts, tmp_path / "f.jsonl")
    dm = FactsDataModule(
        tokenizer=tiny_llama_dir, facts_path=str(tmp_path / "f.jsonl"), num_heldout=3, seed=1
    )
    dm.setup()
    train_ids = {f.id for f in dm.facts}
    heldout_ids = {f.id for f in dm.heldout_facts}
    assert len(train_ids) == 7 and len(heldout_ids) == 3 and not train_ids & heldout_ids
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    assert sorted(torch.cat([b["fact_ids"] for b in loaders[1]]).tolist()) == sorted(heldout_ids)


def test_datamodule_errors(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="does not exist"):
        FactsDataModule(tokenizer=tiny_llama_dir, facts_path=str(tmp_path / "none.jsonl")).setup()
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no facts"):
        FactsDataModule(tokenizer=tiny_llama_dir, facts_path=str(tmp_path / "empty.jsonl")).setup()
    (tmp_path / "three.jsonl").write_text(
        "".join(f'{{"question": "q{i}?", "answer": "a{i}"}}\n' for i in range(3))
    )
    with pytest.raises(ValueError, match="num_heldout=3 leaves no fact to train on"):
        FactsDataModule(
            tokenizer=tiny_llama_dir, facts_path=str(tmp_path / "three.jsonl"), num_heldout=3
        ).setup()
    with pytest.raises(ValueError, match="must contain .{question}"):
        FactsDataModule(template="Q: A:")
