"""Retain loss: memory experts learn to leave inputs that ask no memorised fact as the backbone had them.

With the fact gate off every input selects experts, and experts trained only on their facts change the
output of whatever else reaches them (measured on SmolLM2: real-text NLL x1.70, held-out answers 6.6 ->
18.6 nats). The retain loss adds, in phase 2, the KL divergence from the frozen backbone's next-token
distribution to the routed model's on inputs that are not facts::

    loss = fact NLL + weight * mean_positions KL(p_backbone || p_mome)

Retain inputs (never the evaluation's): ``questions`` random-fact questions about other entities than the
trained and held-out facts (with their own random answers, so the answer positions are covered) and
``chunks`` chunks of ``memexp/data/retain_text.txt`` (Python standard-library docstrings: disjoint from the
real-text corpus the interference metrics use). Each is routed once, as inference routes it with the gate
open (questions on their prompt, prose on the whole chunk), by the frozen phase-2 router (snap routing
included when configured). The blocks
below the lowest expert site are cached (:class:`memexp.layer_cache.LayerCache`) together with the
backbone's final hidden state, so a step runs the expert blocks once with experts on; the LM head runs at
``positions`` sampled positions per row only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoding.errors import UserError
from memexp.answer_logits import answer_positions
from memexp.data import IGNORE_INDEX, Example, collate_examples, tokenize_fact
from memexp.fact_tuning import check_number
from memexp.facts import Fact, random_facts
from memexp.layer_cache import LayerCache, decoder_parts, head_at, run_layers
from memexp.mome.model import MoMEModel
from memexp.mome.router import masked_mean
from memexp.real_text import RETAIN_TEXT, real_text_chunks

QUESTION_SEED_OFFSET = 7_919  # retain questions are drawn with seed + this, then cleared of used entities


def retain_questions(n: int, used: list[Fact], seed: int, min_len: int = 8, max_len: int = 32) -> list[Fact]:
    """``n`` random facts whose questions are none of ``used`` (the trained and held-out facts')."""
    if n == 0:
        return []
    taken = {f.question for f in used}
    pool = random_facts(n + len(taken), seed + QUESTION_SEED_OFFSET, min_len, max_len)
    fresh = [f for f in pool if f.question not in taken][:n]
    return [Fact(i, f.question, f.answer) for i, f in enumerate(fresh)]


def retain_examples(
    tokenizer, template: str, used: list[Fact], questions: int, chunks: int, chunk_len: int, seed: int
) -> list[Example]:
    """Retain questions (prompt = the question, answer = its random answer) then prose chunks (prompt =
    the whole chunk: the router pools over it, every position is compared); ids ``0 .. n-1``."""
    out = [tokenize_fact(f, tokenizer, template) for f in retain_questions(questions, used, seed)]
    if chunks:
        text = real_text_chunks(tokenizer, chunk_len, chunks, path=RETAIN_TEXT)
        if len(text) < chunks:
            raise UserError(
                f"retain_chunks={chunks} asks for more than the {len(text)} chunks of {chunk_len} tokens in "
                f"{RETAIN_TEXT.name}; use retain_chunks <= {len(text)} or shorter retain_chunk_len"
            )
        out += [Example(0, ids, []) for ids in text]
    return [Example(i, e.prompt_ids, e.answer_ids) for i, e in enumerate(out)]


class RetainSet:
    """The retain inputs of one fit, their cached states, routing and backbone targets.

    Args:
        mome: the MoME model in phase 2 (router frozen).
        examples: :func:`retain_examples`.
        pad_id: the tokenizer's pad id.
        positions: compared positions per row and step (sampled).
        batch_size: rows per step.
        seed: sampling seed.
        eval_batch_size: rows per batch while the cache is built.
    """

    def __init__(
        self,
        mome: MoMEModel,
        examples: list[Example],
        pad_id: int,
        positions: int,
        batch_size: int,
        seed: int,
        eval_batch_size: int = 64,
    ) -> None:
        if mome.config.per_token:
            raise UserError(
                "the retain loss needs per-question routing; set mome.per_token=false or retain_weight=0"
            )
        device = next(mome.parameters()).device
        self.batch = {k: v.to(device) for k, v in collate_examples(examples, pad_id).items()}
        b = self.batch
        prose = (b["labels"] == IGNORE_INDEX).all(1, keepdim=True)  # (R, 1) rows without an answer
        self.compared = answer_positions(b["labels"])  # (R, T) questions: the positions predicting answers
        self.compared[:, :-1] |= prose & b["prompt_mask"][:, 1:]  # prose: every position predicting a token
        self.positions, self.batch_size = positions, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.cut = mome.first_site_layer
        parts = decoder_parts(mome.backbone)
        pool_layer = mome.query_layer if mome.query_layer < self.cut else None
        batches = [
            {k: v[i : i + eval_batch_size] for k, v in b.items()}
            for i in range(0, len(examples), eval_batch_size)
        ]
        with torch.no_grad(), mome.experts_off():
            self.cache = LayerCache.build(
                mome.backbone,
                batches,
                self.cut,
                pool_layer,
                pool=lambda hidden, batch: masked_mean(hidden, batch["prompt_mask"]),
                fingerprint="retain",
            )
            states = self.cache.lookup(b["fact_ids"], b["input_ids"].shape[1])  # (R, T, H)
            self.target = run_layers(
                parts, states, b["attention_mask"], self.cut, len(parts.layers)
            )  # (R, T, H)
            if pool_layer is None:  # the query layer is at or above the cut: route with the backbone
                features = mome.route(b["input_ids"], b["attention_mask"], b["prompt_mask"]).features
            else:
                features = self.cache.features  # (R, H)
            routing = mome.router.route_features(features, gated=False)  # snapping as configured
            self.ids, self.weights = routing.ids, routing.weights  # (R, K)

    def __len__(self) -> int:
        return self.batch["input_ids"].shape[0]

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``(B,)`` of this step and the compared positions ``(B, T)``, at most ``positions`` per row."""
        rows = torch.randperm(len(self), generator=self.generator)[: self.batch_size].to(self.ids.device)
        mask = self.compared[rows]
        score = torch.rand(mask.shape, generator=self.generator).to(mask.device).masked_fill(~mask, -1.0)
        rank = score.argsort(1, descending=True).argsort(1)  # (B, T) 0 = the highest score
        return rows, mask & (rank < self.positions)

    def loss(self, mome: MoMEModel) -> torch.Tensor:
        """Mean KL(backbone || routed model) over one step's sampled retain positions."""
        rows, keep = self._sample()
        parts = decoder_parts(mome.backbone)
        attn = self.batch["attention_mask"][rows]
        hidden = self.cache.lookup(rows, attn.shape[1])  # (B, T, H); fact ids are the rows
        fixed = (self.ids[rows], self.weights[rows])
        with mome.selected(*fixed):
            upper = run_layers(parts, hidden, attn, self.cut, len(parts.layers))  # (B, T, H)
        log_p = F.log_softmax(head_at(parts, upper, keep).float(), -1)  # (N, V)
        with torch.no_grad():
            log_q = F.log_softmax(head_at(parts, self.target[rows], keep).float(), -1)  # (N, V) backbone
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")


def check_retain(
    weight: float, questions: int, chunks: int, chunk_len: int, batch: int, positions: int
) -> None:
    """Refuse retain settings that cannot work, before the backbone is loaded."""
    for name, value, low in (
        ("retain_questions", questions, 0),
        ("retain_chunks", chunks, 0),
        ("retain_chunk_len", chunk_len, 2),
        ("retain_batch", batch, 1),
        ("retain_positions", positions, 1),
    ):
        check_number(name, value, low=low, strict=False)
    check_number("retain_weight", weight, strict=False, fix="0 turns the retain loss off, e.g. 1.0")
    if weight > 0 and questions + chunks == 0:
        raise UserError(
            f"retain_weight={weight} needs retain inputs: set retain_questions and/or retain_chunks > 0"
        )
