"""Templated questions with one-word answers: the data of the DeRa benchmark and of the known-facts task.

Seven families of curated facts (capitals, opposites, colours, languages, young animals, plurals,
sums of two digits), each asked with two phrasings. :func:`split_questions` shuffles each family's
entities with a seed and holds ``n_eval`` of them out for evaluation, spread over the families; an
entity (a country, a word, a pair of digits) is in the training set or in the evaluation set, never
both, so no evaluation question is seen in training, not even with the other phrasing.

The answers are what a one-word answer should say; the benchmark trains on them (the behaviour to
learn is the style, one word, not the facts) and reports, as a side metric, whether an answer contains
the expected word.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Spain": "Madrid", "Italy": "Rome", "Japan": "Tokyo",
    "Canada": "Ottawa", "Australia": "Canberra", "Egypt": "Cairo", "Peru": "Lima", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Russia": "Moscow",
    "China": "Beijing", "Kenya": "Nairobi", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Poland": "Warsaw", "Turkey": "Ankara", "Iran": "Tehran",
    "Iraq": "Baghdad", "Thailand": "Bangkok", "Cuba": "Havana", "Venezuela": "Caracas",
    "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Indonesia": "Jakarta", "the Philippines": "Manila", "Vietnam": "Hanoi",
    "Nigeria": "Abuja", "Ghana": "Accra", "Morocco": "Rabat", "Iceland": "Reykjavik", "Lebanon": "Beirut",
    "Syria": "Damascus", "Afghanistan": "Kabul", "Pakistan": "Islamabad", "Nepal": "Kathmandu",
    "Qatar": "Doha", "Jamaica": "Kingston", "South Korea": "Seoul", "Chile": "Santiago",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "open": "closed",
    "early": "late", "young": "old", "rich": "poor", "wet": "dry", "full": "empty", "hard": "soft",
    "strong": "weak", "tall": "short", "loud": "quiet", "love": "hate", "win": "lose", "push": "pull",
    "day": "night", "black": "white", "north": "south", "east": "west", "left": "right", "true": "false",
    "high": "low", "thick": "thin", "heavy": "light", "begin": "end", "buy": "sell", "clean": "dirty",
    "cheap": "expensive", "inside": "outside", "above": "below", "before": "after", "first": "last",
    "alive": "dead", "remember": "forget", "friend": "enemy", "accept": "reject", "arrive": "leave",
}  # fmt: skip
COLOURS = {
    "a banana": "yellow", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
    "a clear daytime sky": "blue", "a carrot": "orange", "an emerald": "green", "a lemon": "yellow",
    "milk": "white", "a ripe tomato": "red", "chocolate": "brown", "a ruby": "red", "a sapphire": "blue",
    "a crow": "black", "a flamingo": "pink", "charcoal": "black", "a lime": "green", "a polar bear": "white",
    "a pumpkin": "orange", "an aubergine": "purple", "a strawberry": "red", "a frog": "green",
    "a raven": "black", "a canary": "yellow", "the sea": "blue", "ivory": "white", "a cherry": "red",
}  # fmt: skip
LANGUAGES = {
    "Brazil": "Portuguese", "Mexico": "Spanish", "France": "French", "Germany": "German",
    "Italy": "Italian", "Japan": "Japanese", "Russia": "Russian", "Greece": "Greek", "Poland": "Polish",
    "Turkey": "Turkish", "Sweden": "Swedish", "Norway": "Norwegian", "Finland": "Finnish",
    "Hungary": "Hungarian", "the Netherlands": "Dutch", "Portugal": "Portuguese", "Argentina": "Spanish",
    "Egypt": "Arabic", "Thailand": "Thai", "Vietnam": "Vietnamese", "South Korea": "Korean",
    "Iran": "Persian", "Denmark": "Danish", "Romania": "Romanian", "Ukraine": "Ukrainian",
    "Czechia": "Czech", "Indonesia": "Indonesian", "Israel": "Hebrew", "England": "English",
}  # fmt: skip
YOUNG = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal", "frog": "tadpole",
    "kangaroo": "joey", "bear": "cub", "duck": "duckling", "goose": "gosling", "swan": "cygnet",
    "pig": "piglet", "owl": "owlet", "eagle": "eaglet", "deer": "fawn", "hen": "chick", "lion": "cub",
    "fox": "kit", "goat": "kid", "seal": "pup", "elephant": "calf", "whale": "calf", "tiger": "cub",
}  # fmt: skip
PLURALS = {
    "mouse": "mice", "child": "children", "goose": "geese", "foot": "feet", "tooth": "teeth",
    "man": "men", "woman": "women", "person": "people", "ox": "oxen", "cactus": "cacti",
    "leaf": "leaves", "knife": "knives", "wolf": "wolves", "box": "boxes", "city": "cities",
    "baby": "babies", "bus": "buses", "potato": "potatoes", "sheep": "sheep", "fish": "fish",
    "louse": "lice", "half": "halves", "wife": "wives", "loaf": "loaves", "fungus": "fungi",
}  # fmt: skip
SUMS = {f"{a} plus {b}": str(a + b) for a in range(2, 10) for b in range(a, 10)}

FAMILIES: dict[str, tuple[dict[str, str], tuple[str, str]]] = {
    "capital": (CAPITALS, ("What is the capital of {}?", "Which city is the capital of {}?")),
    "opposite": (OPPOSITES, ("What is the opposite of {}?", "What word means the opposite of '{}'?")),
    "colour": (COLOURS, ("What colour is {}?", "What is the colour of {}?")),
    "language": (LANGUAGES, ("Which language is spoken in {}?", "What language do people in {} speak?")),
    "young": (YOUNG, ("What is a baby {} called?", "What do we call a young {}?")),
    "plural": (PLURALS, ("What is the plural of '{}'?", "What is the plural form of the word {}?")),
    "sum": (SUMS, ("What is {}?", "How much is {}?")),
}  # fmt: skip


@dataclass(frozen=True)
class Question:
    """One templated question: its family, the entity it asks about, the text and the expected word."""

    family: str
    entity: str
    text: str
    answer: str


def split_questions(n_eval: int = 48, seed: int = 0) -> tuple[list[Question], list[Question]]:
    """Training and evaluation questions, disjoint by entity within each family.

    Each family gives ``n_eval // 7`` evaluation entities (one more for the first ``n_eval % 7``
    families) asked with one phrasing; every other entity is a training question in both phrasings.

    Args:
        n_eval: number of evaluation questions (each family keeps at least half its entities for training).
        seed: seed of the entity shuffle and of the evaluation phrasing.

    Returns:
        ``(train, eval)`` lists of :class:`Question`.
    """
    per, extra = divmod(n_eval, len(FAMILIES))
    rng = random.Random(seed)
    train, held = [], []
    for i, (family, (facts, templates)) in enumerate(FAMILIES.items()):
        k = per + (i < extra)
        if not 0 <= 2 * k <= len(facts):
            most = len(FAMILIES) * min(len(f) // 2 for f, _ in FAMILIES.values())
            raise ValueError(
                f"n_eval={n_eval} would hold out {k} of the {len(facts)} {family} facts; use n_eval <= {most}"
            )
        entities = sorted(facts)
        rng.shuffle(entities)
        for entity in entities[:k]:
            held.append(Question(family, entity, rng.choice(templates).format(entity), facts[entity]))
        for entity in entities[k:]:
            train += [Question(family, entity, t.format(entity), facts[entity]) for t in templates]
    return train, held
