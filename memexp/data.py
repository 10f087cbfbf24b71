"""``FactsDataModule``: facts -> tokenised (prompt, answer) examples with the loss masked to the answer.

Each example is ``prompt_ids + answer_ids + [eos]`` where the prompt is ``template.format(question=...)``
and the answer is tokenised on its own as ``" " + answer`` (so the answer ids are exactly what a
greedy decoder must produce). ``labels`` are ``-100`` on the prompt and padding. Batches are dicts::

    input_ids       (B, T) long, right-padded with the pad id
    attention_mask  (B, T) long
    labels          (B, T) long, -100 outside answer + eos
    prompt_mask     (B, T) bool, True on prompt (question) tokens: what a router pools over
    fact_ids        (B,)   long

Validation returns two loaders: the memorised facts (dataloader 0) and the held-out facts
(dataloader 1, never trained on; present when ``num_heldout > 0``).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, replace

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

from decoding.errors import UserError
from memexp.facts import Fact, load_facts, random_facts

IGNORE_INDEX = -100


_FIXES = {
    "batch_size": "use a positive training batch size, e.g. 16",
    "eval_batch_size": "use a positive evaluation batch size, e.g. 128",
    "num_random_facts": "ask for at least one generated fact, or pass data.facts_path",
    "num_heldout": "use 0 for no held-out facts",
    "answer_min_len": "generated answers need at least one character",
    "num_workers": "use 0 to load data in the main process",
}


def check_template(template: str) -> None:
    """Refuse a prompt template without exactly the one ``{question}`` field.

    Raises:
        UserError: no ``{question}``, another ``{field}``, or unbalanced braces (double them: ``{{``).
    """
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise UserError(
            f"data.template={template!r} is not a valid format string ({err}); write literal braces as "
            "'{{' and '}}'"
        ) from None
    if fields != {"question"}:
        raise UserError(
            f"data.template={template!r} must contain '{{question}}' and no other field (found "
            f"{sorted(fields) or 'none'}), e.g. 'Q: {{question}}\\nA:'; "
            "write literal braces as '{{' and '}}'"
        )


@dataclass
class Example:
    """One tokenised fact."""

    fact_id: int
    prompt_ids: list[int]
    answer_ids: list[int]  # answer tokens followed by eos
    source_id: int | None = None  # a training rewording of this fact id (None: the fact's own question)


def tokenize_fact(fact: Fact, tokenizer, template: str) -> Example:
    """Tokenise a fact; refuse answers that the tokenizer cannot represent exactly."""
    prompt_ids = tokenizer(template.format(question=fact.question)).input_ids
    answer_ids = tokenizer(" " + fact.answer, add_special_tokens=False).input_ids
    where = f"fact id {fact.id} ({fact.question!r:.60})"
    if not answer_ids:
        raise UserError(
            f"{where}: the answer {fact.answer!r:.60} tokenizes to nothing; use an answer the tokenizer "
            "can represent, or a tokenizer that covers its characters"
        )
    decoded = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    if decoded != fact.answer:
        raise UserError(
            f"{where}: the answer {fact.answer!r:.60} does not survive tokenization (decodes to "
            f"{decoded!r:.60}, e.g. unknown characters), so it could never be recalled exactly; "
            "fix the answer or use a tokenizer that covers its characters"
        )
    return Example(fact.id, prompt_ids, answer_ids + [tokenizer.eos_token_id])


def collate_examples(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a training batch (see the module docstring for the keys)."""
    lengths = [len(e.prompt_ids) + len(e.answer_ids) for e in examples]
    B, T = len(examples), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    prompt_mask = torch.zeros((B, T), dtype=torch.bool)
    for row, (ex, n) in enumerate(zip(examples, lengths)):
        p = len(ex.prompt_ids)
        input_ids[row, :n] = torch.tensor(ex.prompt_ids + ex.answer_ids)
        labels[row, p:n] = torch.tensor(ex.answer_ids)
        attention_mask[row, :n] = 1
        prompt_mask[row, :p] = True
    fact_ids = torch.tensor([e.fact_id for e in examples], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_mask": prompt_mask,
        "fact_ids": fact_ids,
    }


class EpochShuffle(RandomSampler):
    """A random order that depends only on (seed, epoch): a run resumed at an epoch replays it.

    Lightning calls :meth:`set_epoch` before every training epoch; under DDP it swaps this sampler
    for a ``DistributedSampler``, which is seeded per epoch the same way.
    """

    def __init__(self, data_source, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)


class FactsDataModule(L.LightningDataModule):
    """Facts to memorise (from JSONL or generated) plus a held-out split that is never trained on.

    Args:
        tokenizer: tokenizer folder / hub id / ``tiny:`` name; the CLI links it to the model's backbone.
        facts_path: JSONL facts file; when None, ``num_random_facts`` random facts are generated.
        num_random_facts: number of generated facts to memorise (ignored with ``facts_path``).
        num_heldout: facts split off (seeded) and never trained on, to measure the backbone's
            behaviour on inputs that are not memorised.
        answer_min_len: shortest generated answer, in characters.
        answer_max_len: longest generated answer, in characters.
        template: prompt template with a ``{question}`` field.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        seed: seed for fact generation and the held-out split.
        num_workers: DataLoader workers.
        train_paraphrases: also train every fact's question reworded by
            :data:`memexp.paraphrase.TRAIN_TEMPLATES` (random facts' questions only; disjoint from the
            held-out :data:`~memexp.paraphrase.CODE_TEMPLATES`). Each rewording is an extra training
            example with an id after every fact's and ``source_id`` = its fact, whose experts it shares
            (:class:`memexp.mome.MoMETuning`); ``facts`` keeps the facts only.
    """

    def __init__(
        self,
        tokenizer: str = "tiny:llama",
        facts_path: str | None = None,
        num_random_facts: int = 200,
        num_heldout: int = 0,
        answer_min_len: int = 8,
        answer_max_len: int = 32,
        template: str = "Q: {question}\nA:",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        train_paraphrases: bool = False,
    ) -> None:
        super().__init__()
        check_template(template)
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_random_facts", num_random_facts, 0 if facts_path else 1),
            ("num_heldout", num_heldout, 0),
            ("answer_min_len", answer_min_len, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise UserError(f"data.{name}={value} must be >= {low}; {_FIXES[name]}")
        if answer_max_len < answer_min_len:
            raise UserError(
                f"data.answer_max_len={answer_max_len} is below data.answer_min_len={answer_min_len}; "
                "set answer_max_len >= answer_min_len"
            )
        # a facts file is read now, so that a bad file is refused before any model is loaded
        self._file_facts = load_facts(facts_path) if facts_path is not None else None
        if self._file_facts is not None and num_heldout >= len(self._file_facts):
            raise UserError(
                f"data.num_heldout={num_heldout} leaves no fact to train on: {facts_path} holds "
                f"{len(self._file_facts)} facts; use num_heldout < {len(self._file_facts)}"
            )
        self.save_hyperparameters()
        self.train_examples: list[Example] = []
        self.heldout_examples: list[Example] = []
        self.facts: list[Fact] = []
        self.heldout_facts: list[Fact] = []
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        """Load or generate the facts, split off the held-out ones and tokenise everything."""
        if self.tokenizer is not None:
            return
        from decoding.models import load_tokenizer

        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer)
        if self._file_facts is not None:
            facts = self._file_facts
        else:
            facts = random_facts(
                hp.num_random_facts + hp.num_heldout, hp.seed, hp.answer_min_len, hp.answer_max_len
            )
        order = list(range(len(facts)))
        if hp.facts_path is not None and hp.num_heldout:
            random.Random(hp.seed).shuffle(order)
        split = len(facts) - hp.num_heldout
        self.facts = [facts[i] for i in sorted(order[:split])]
        self.heldout_facts = [facts[i] for i in sorted(order[split:])]
        self.train_examples = [tokenize_fact(f, self.tokenizer, hp.template) for f in self.facts]
        self.heldout_examples = [tokenize_fact(f, self.tokenizer, hp.template) for f in self.heldout_facts]
        if hp.train_paraphrases:
            from memexp.paraphrase import training_rewordings

            first = max(f.id for f in facts) + 1
            for source, fact in training_rewordings(self.facts, first):
                example = tokenize_fact(fact, self.tokenizer, hp.template)
                self.train_examples.append(replace(example, source_id=source))

    def _loader(self, examples: list, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            examples,
            batch_size=batch_size,
            sampler=EpochShuffle(examples, self.hparams.seed) if shuffle else None,
            num_workers=self.hparams.num_workers,
            collate_fn=lambda batch: collate_examples(batch, self.tokenizer.pad_token_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [self._loader(self.train_examples, self.hparams.eval_batch_size, shuffle=False)]
        if self.heldout_examples:
            loaders.append(self._loader(self.heldout_examples, self.hparams.eval_batch_size, shuffle=False))
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()
