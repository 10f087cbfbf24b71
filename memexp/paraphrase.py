"""Held-out paraphrases of a fact's question: does a memorised fact survive a reworded question?

Random facts ask ``"What is the code of <entity>?"`` (:data:`memexp.facts.CODE_QUESTION`); for them
:data:`CODE_TEMPLATES` rewrites the whole question around the same entity, one kind of change each::

    code_for      What is the code for the red river?       another preposition
    contraction   What's the code of the red river?         contraction
    lowercase     what is the code of the red river?        case
    no_mark       What is the code of the red river         punctuation
    tell_me       Tell me the code of the red river.        imperative, reordered
    possessive    The red river's code is what?             possessive, question word last
    which_code    Which code does the red river have?       other words, reordered

None of them is ever a training question. Training uses the original wording only, unless
``FactsDataModule(train_paraphrases=True)`` adds the rewordings of :data:`TRAIN_TEMPLATES`, a separate
set that shares no template with the held-out ones::

    give_me       Give me the code of the red river.        imperative (another verb)
    whose         What is the red river's code?             possessive, question word first
    do_you_know   Do you know the code of the red river?    yes/no question
    belongs_to    What code belongs to the red river?       other words

They teach a fact's experts more than one wording (:class:`memexp.mome.MoMETuning` gives each rewording
its fact's experts); the 7 held-out templates then measure wordings never trained on. A question from a
user's facts file has no known entity, so only surface variants apply (:func:`surface_variants`):
``case`` (the first letter's case swapped), ``punctuation`` (the trailing ``?``/``.``/``!`` dropped, or a
``?`` added) and ``contraction`` ("What is" <-> "What's", "Who is" <-> "Who's"... when the question has
one). A variant that would leave the text unchanged is left out. Everything here is deterministic (no
random choice), so the same facts always give the same paraphrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memexp.facts import CODE_QUESTION, Fact

CODE_TEMPLATES: dict[str, str] = {
    "code_for": "What is the code for {entity}?",
    "contraction": "What's the code of {entity}?",
    "lowercase": "what is the code of {entity}?",
    "no_mark": "What is the code of {entity}",
    "tell_me": "Tell me the code of {entity}.",
    "possessive": "{Entity}'s code is what?",
    "which_code": "Which code does {entity} have?",
}
SURFACE_VARIANTS = ("case", "punctuation", "contraction")

# training rewordings only: never a held-out template (checked below and by the tests)
TRAIN_TEMPLATES: dict[str, str] = {
    "give_me": "Give me the code of {entity}.",
    "whose": "What is {entity}'s code?",
    "do_you_know": "Do you know the code of {entity}?",
    "belongs_to": "What code belongs to {entity}?",
}
assert not set(TRAIN_TEMPLATES.values()) & set(CODE_TEMPLATES.values())

_CODE_RE = re.compile("^" + re.escape(CODE_QUESTION).replace(re.escape("{entity}"), "(?P<entity>.+)") + "$")
_WORDS = ("What", "Who", "Where", "When", "How", "It", "That", "There", "Here")
_CONTRACTIONS = {f"{w} is": f"{w}'s" for word in _WORDS for w in (word, word.lower())}


@dataclass(frozen=True)
class Paraphrase:
    """One rewording of a fact's question.

    Attributes:
        fact_id: the fact it rewords.
        template: the kind of change (a :data:`CODE_TEMPLATES` or :data:`SURFACE_VARIANTS` name).
        question: the reworded question.
        entity: ``(start, end)`` characters of the entity in ``question`` (None when unknown).
    """

    fact_id: int
    template: str
    question: str
    entity: tuple[int, int] | None


def code_entity(question: str) -> tuple[int, int] | None:
    """``(start, end)`` of the entity in a random fact's question, or None for any other question."""
    match = _CODE_RE.match(question)
    return match.span("entity") if match else None


def code_rewordings(question: str, templates: dict[str, str]) -> dict[str, str] | None:
    """``{template name: the question reworded}`` for a random fact's question, None for any other.

    Args:
        question: a fact's question.
        templates: ``{name: template}`` with ``{entity}`` (and ``{Entity}``, capitalised) placeholders.
    """
    span = code_entity(question)
    if span is None:
        return None
    entity = question[span[0] : span[1]]
    capital = entity[:1].upper() + entity[1:]
    return {name: t.format(entity=entity, Entity=capital) for name, t in templates.items()}


def _find(text: str, entity: str) -> tuple[int, int]:
    start = text.lower().index(entity.lower())
    return start, start + len(entity)


def surface_variants(question: str) -> dict[str, str]:
    """Case, punctuation and contraction variants of any question (those that change the text).

    Args:
        question: a question as it appears in a facts file.

    Returns:
        ``{variant name: reworded question}``, in :data:`SURFACE_VARIANTS` order.
    """
    variants = {}
    first = question[:1]
    if first.isalpha() and first.swapcase() != first:
        variants["case"] = first.swapcase() + question[1:]
    stripped = question.rstrip()
    variants["punctuation"] = stripped[:-1].rstrip() if stripped[-1:] in "?.!" else stripped + "?"
    for long, short in _CONTRACTIONS.items():
        for a, b in ((long, short), (short, long)):
            if re.search(rf"\b{re.escape(a)}\b", question):
                variants["contraction"] = re.sub(rf"\b{re.escape(a)}\b", b, question, count=1)
                break
        if "contraction" in variants:
            break
    return {name: text for name, text in variants.items() if text and text != question}


def paraphrases(fact: Fact) -> list[Paraphrase]:
    """The held-out rewordings of one fact: :data:`CODE_TEMPLATES` for a random fact's question,
    :func:`surface_variants` for any other."""
    reworded = code_rewordings(fact.question, CODE_TEMPLATES)
    if reworded is None:
        return [
            Paraphrase(fact.id, name, text, None) for name, text in surface_variants(fact.question).items()
        ]
    entity = fact.question[slice(*code_entity(fact.question))]
    return [Paraphrase(fact.id, name, text, _find(text, entity)) for name, text in reworded.items()]


def paraphrase_facts(facts: list[Fact]) -> list[Paraphrase]:
    """:func:`paraphrases` of every fact, fact by fact."""
    return [p for fact in facts for p in paraphrases(fact)]


def training_rewordings(facts: list[Fact], first_id: int) -> list[tuple[int, Fact]]:
    """:data:`TRAIN_TEMPLATES` rewordings of the random facts' questions, as new facts to train.

    Args:
        facts: the facts to train; questions that are not a random fact's are skipped.
        first_id: the first free fact id; rewording ``j`` of the ``i``-th fact gets
            ``first_id + j * len(facts) + i``.

    Returns:
        ``(source fact id, reworded fact)`` pairs, template by template.
    """
    reworded = [code_rewordings(fact.question, TRAIN_TEMPLATES) for fact in facts]  # one parse per fact
    return [
        (fact.id, Fact(first_id + j * len(facts) + i, texts[name], fact.answer))
        for j, name in enumerate(TRAIN_TEMPLATES)
        for i, (fact, texts) in enumerate(zip(facts, reworded))
        if texts is not None
    ]
