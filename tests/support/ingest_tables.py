"""Tiny hand-made raw tables (items, users, interactions) and the config that ingests them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config


SCHEMA = {
    "query_key": "user_id",
    "query_features": [
        {"name": "user_id", "type": "id"},
        {"name": "age", "type": "numeric"},
        {"name": "gender", "type": "categorical"},
    ],
    "item_features": [
        {"name": "title", "type": "text"},
        {"name": "genres", "type": "multi_categorical"},
        {"name": "price", "type": "numeric"},
    ],
}


def make_config(path: Path, **data) -> Config:
    return Config.model_validate({
        "data": {"path": str(path), **data},
        "schema": SCHEMA,
        "publish": {"store": str(path / "store")},
    })


def good_tables() -> dict[str, pd.DataFrame]:
    """Clean tables; the optional features have gaps (missing is not malformed)."""
    items = pd.DataFrame({
        "item_id": ["i1", "i2", "i3"],
        "title": ["The Matrix", None, "Heat"],
        "genres": ["Action|Sci-Fi", "Comedy", None],
        "price": [10.0, np.nan, 30.0],
    })
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": [30.0, np.nan], "gender": ["F", None]})
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"],
        "item_id": ["i1", "i2", "i2", "i3"],
        "label": [1, 1, 0, 1],
        "rating": [5.0, 4.0, 1.0, 3.5],
        "timestamp": [100, 200, 300, 400],
    })
    return {"items": items, "users": users, "interactions": interactions}


def write_tables(folder: Path, tables: dict[str, pd.DataFrame], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_json(path, orient="records", lines=True)
    return folder
