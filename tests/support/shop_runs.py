"""The embedded default dataset for whole-pipeline tests, with the acceptance queries held out.

The generator always plants :data:`ACCEPTANCE_QUERIES`; :func:`shop_dataset` removes every
interaction of them before any run, so no split or vocabulary has seen them and the queries
test retrieval of unseen text, judged by the catalogue's own category field.
"""

from __future__ import annotations

from pathlib import Path

from datagen.synth_shop import ACCEPTANCE_QUERIES as _PLANTED

#: The queries held out of every split (datagen.synth_shop's planted ones).
ACCEPTANCE_QUERIES = list(_PLANTED)


def shop_dataset(folder: Path) -> Path:
    """``make run``'s dataset (synth-shop defaults) in ``folder``, acceptance queries removed."""
    from datagen.synth_shop import generate_shop

    generate_shop(str(folder))
    hold_out_queries(folder / "interactions.csv", ACCEPTANCE_QUERIES)
    return folder


def hold_out_queries(interactions_csv: Path, queries: list[str]) -> None:
    """Drop every interaction of ``queries`` from the file."""
    import pandas as pd

    table = pd.read_csv(interactions_csv, dtype=str, keep_default_na=False)
    held = table["query"].isin(queries)
    assert held.any(), "the generator planted no acceptance query: nothing would be held out"
    table[~held].to_csv(interactions_csv, index=False)


def shop_config(data: Path, root: Path, extra: tuple[str, ...] = ()):
    """The shipped shop config on ``data``, with its store and runs under ``root``."""
    from core.config import load_config

    return load_config("shop", [f"data.path={data}", f"publish.store={root / 'store'}",
                                f"pipeline.runs_dir={root / 'runs'}", *extra])
