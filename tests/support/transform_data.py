"""Tiny hand-made raw tables whose transform splits, vocabularies and fills are worked out by hand,
and a reader for the vocabularies the transform writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.support.ingest_tables import SCHEMA


#: The ingest tables' schema, with display fields.
USER_SCHEMA = {**SCHEMA, "display_fields": ["title", "price"]}

# Catalog: price mean over known prices = (10 + 20 + 40 + 30) / 4 = 25 -> i3 gets 25.
ITEMS = pd.DataFrame({
    "item_id": ["i1", "i2", "i3", "i4", "i5"],
    "title": ["The Matrix!", "Toy  Story", "Matrix Reloaded", "Alien", "Heat"],
    "genres": ["Action| Sci-Fi ", "Animation|Comedy", "Action", "Drama", None],
    "price": [10.0, 20.0, np.nan, 40.0, 30.0],
})
# u3 has no interactions; u4 interacts but is absent from users.
USERS = pd.DataFrame({
    "user_id": ["u1", "u2", "u3", "u5"],
    "age": [30.0, np.nan, 50.0, 60.0],
    "gender": [" F ", "M", "F", "M"],
})
# u1 (4 positives) by time: i4@50, i1@100, i2@200, i3@300 -> train {i4, i1}, valid i2, test i3.
# u2 (2 positives) -> all train. u4, u5: one positive each -> train.
# u6 (not in users): i3@7, then a tie at t=9 broken by item_id: i1 -> valid, i2 -> test.
# The label-0 row goes to train_negatives only.
INTERACTIONS = pd.DataFrame({
    "user_id": ["u1", "u1", "u1", "u1", "u1", "u2", "u2", "u4", "u5", "u6", "u6", "u6"],
    "item_id": ["i1", "i2", "i3", "i4", "i2", "i2", "i1", "i3", "i2", "i2", "i3", "i1"],
    "label": [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    "timestamp": [100, 200, 300, 50, 400, 100, 100, 10, 5, 9, 7, 9],
})


def read_vocab(out: Path, feature: str) -> list[tuple[str, int]]:
    lines = (out / "vocab" / f"{feature}.tsv").read_text().splitlines()
    return [(tok, int(cnt)) for tok, cnt in (line.split("\t") for line in lines)]
