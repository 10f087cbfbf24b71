"""How the heads see a learner's model: a memory-expert model through RoutedLM, routed on the question."""

from __future__ import annotations

import contextlib

import torch
from memexp_helpers import QUICK_MODEL

from decoding.head_spec import parse_head_spec
from decoding.models import load_causal_lm, load_tokenizer
from memexp.data import collate_examples, tokenize_fact
from memexp.fact_eval import evaluate_batch, fact_columns
from memexp.facts import random_facts
from memexp.model_view import RoutedLM, head_model, reference_of


class FakeMoME(torch.nn.Module):
    """The MoME model interface the heads need: ``backbone``, ``experts_off``, ``forward(question_mask=)``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.seen = backbone, []

    def forward(self, input_ids, attention_mask=None, question_mask=None, **kwargs):
        self.seen.append(question_mask)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def experts_off(self):
        return contextlib.nullcontext()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()


def test_heads_read_a_memory_expert_model_routed_on_the_question_tokens():
    tok = load_tokenizer(QUICK_MODEL)
    batch = collate_examples(
        [tokenize_fact(f, tok, "Q: {question}\nA:") for f in random_facts(4)], tok.pad_token_id
    )
    fake = FakeMoME(load_causal_lm(QUICK_MODEL))
    assert isinstance(head_model(fake, batch), RoutedLM)
    exact = evaluate_batch(fake, batch, {"greedy": parse_head_spec("greedy")})["exact/greedy"]
    assert fake.seen and all(torch.equal(m, batch["prompt_mask"]) for m in fake.seen)
    with torch.no_grad():
        logits = fake.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(exact, fact_columns(logits, batch["labels"])["exact"])
    assert reference_of(fake) == fake.experts_off
