"""Paraphrased shop queries: each category asked for in words no generated query uses.

The synth-shop queries name a category by its name or one of its aliases (datagen/synth_shop.py's
:data:`~datagen.synth_shop.CATEGORIES`), so a text tower learned from scratch has seen every
category word it is asked about. These queries ask for the same categories with a separate word
list (:data:`PARAPHRASES`). A candidate is kept only when none of its words occurs in any query of
the generated set, so the held-out file tests exactly what issue 16 asks: retrieval for wording
no training query used. Deterministic and drawn from no random stream: generating them changes
nothing else in the dataset.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from core.text import normalize_text

#: category -> phrasings of it in words the generator's queries never use (filtered again
#: against the actual queries by :func:`paraphrase_table`).
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "running shoes": ("jogging trainers", "athletic footwear", "footwear for jogging"),
    "dress": ("frock", "evening attire for ladies", "sundress"),
    "laptop": ("ultrabook", "portable pc", "chromebook"),
    "smartphone": ("cellular handset", "android handset", "handset with touchscreen"),
    "phone charger": ("handset mains brick", "plug to recharge a handset"),
    "laptop charger": ("ultrabook mains brick", "mains supply for a portable pc"),
    "headphones": ("headset for music", "cans for listening to music", "over ear audio headset"),
    "t-shirt": ("short sleeve top", "crew neck top"),
    "backpack": ("knapsack", "daypack", "bookbag"),
    "watch": ("timepiece", "chronograph"),
    "coffee maker": ("brewer for roasted beans", "cappuccino brewer", "drip brewer"),
    "jeans": ("dungarees", "trousers made of twill"),
    "jacket": ("parka", "windbreaker", "anorak"),
    "tablet": ("touchscreen reader", "touchscreen slate", "e reader slate"),
    "sunglasses": ("eyewear for sunshine", "uv protection eyewear", "aviators"),
    "yoga mat": ("stretching pad", "workout pad for stretching"),
    "water bottle": ("hydration vessel", "thermos", "canteen for trekking"),
    "blender": ("juicer for fruit", "food processor", "liquidiser"),
    "handbag": ("clutch", "shoulder satchel", "pocketbook"),
    "desk lamp": ("table light for studying", "bedside light", "task light"),
}


#: Function words a paraphrase may share with the generated queries ("for women", "charger for").
FUNCTION_WORDS = frozenset({"a", "an", "the", "for", "to", "of", "with"})


def query_words(queries: Iterable[str]) -> set[str]:
    """Every content word of ``queries`` after the pipeline's own text normalisation."""
    return {w for q in queries for w in normalize_text(q).split()} - FUNCTION_WORDS


def paraphrase_table(queries: Iterable[str]) -> pd.DataFrame:
    """``query, category``: every :data:`PARAPHRASES` entry that shares no content word (all but
    :data:`FUNCTION_WORDS`) with ``queries`` (the generated set), in the table's order."""
    used = query_words(queries)
    rows = [(text, category) for category, texts in PARAPHRASES.items() for text in texts
            if not set(normalize_text(text).split()) & used]
    return pd.DataFrame(rows, columns=["query", "category"])
