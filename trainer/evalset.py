"""Evaluation query sets and the catalog, shared by validation (training) and test
evaluation so both follow one protocol.

A query is a distinct key (``schema.query_key`` value) of a split; its features are
taken from its first example there; its relevant items are the split's items for that
key; its masked items are the key's items in ``mask_splits`` (from seen.jsonl) minus
the relevant ones (a re-purchase of a seen item stays retrievable, so it is not a
guaranteed miss). An empty ``mask_splits`` masks nothing (``evaluate.mask_seen: false``,
the TFRS tutorial protocol) and does not read seen.jsonl.

Item popularity (:func:`catalog_popularity`) comes from ``vocab/item_id.tsv`` (train
counts); it drives the popularity baseline and the head / torso / tail / cold slices.

Scoring every key against the whole catalog costs keys x items; above ``max_queries``
keys a seeded uniform sample of them is scored instead
(:func:`core.sampling.sample_keys`, the one definition both test evaluation and
per-epoch validation use).

Trainer-internal (imports TensorFlow through :mod:`trainer.data`).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from core import storage
from core.config import Config
from core.contracts import files as names
from core.records import ITEM_KEY, interaction_specs, item_specs
from core.sampling import sample_keys
from core.text import normalize_text
from trainer import artifacts
from trainer.data import read_columns
from core.metrics import item_slices


@dataclass
class Catalog:
    """Every catalog item: ``ids[i]`` is position i; ``features`` columns are [N]."""

    ids: list[str]
    features: dict[str, np.ndarray]

    @property
    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids)}


@dataclass
class QuerySet:
    """Q evaluation queries: ``features`` columns [Q], ``relevant``/``masked`` Q position arrays.

    ``n_total`` is the number of eligible keys the Q were drawn from (Q when not sampled).
    """

    keys: list[str]
    features: dict[str, np.ndarray]
    relevant: list[np.ndarray]
    masked: list[np.ndarray]
    n_total: Optional[int] = None

    def __post_init__(self) -> None:
        if self.n_total is None:
            self.n_total = len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def sampled(self) -> bool:
        """Whether only a sample of the split's keys is held."""
        return len(self.keys) < self.n_total


def local_transformed(transformed_dir: str, local_dir: str, splits: tuple[str, ...],
                      files: tuple[str, ...]) -> str:
    """A local folder holding the named parts of a transform output folder (local or gs://).

    A local ``transformed_dir`` is returned as it is (read in place). A gs:// one has the
    ``<split>-*.tfrecord`` shards of ``splits`` and the ``files`` (relative paths such as
    ``vocab/item_id.tsv``; absent ones are skipped, so the readers below report them)
    downloaded into ``local_dir`` through :mod:`core.storage`, and ``local_dir`` is
    returned. Why download rather than let TensorFlow read gs:// itself: TF's GCS
    filesystem does not honour ``STORAGE_EMULATOR_HOST``, so only this path works both on
    a cluster and against a test emulator; and only the parts asked for are fetched (the
    train shards, the bulk of the folder, are not).
    """
    if not storage.is_gcs(transformed_dir):
        return transformed_dir
    base = transformed_dir.rstrip("/")
    patterns = [names.split_pattern(split) for split in splits]
    wanted = set(files)
    for path in storage.list_files(base):
        rel = path[len(base) + 1:]
        top = "/" not in rel
        if rel in wanted or (top and any(fnmatch.fnmatchcase(rel, p) for p in patterns)):
            storage.write_bytes(os.path.join(local_dir, *rel.split("/")), storage.read_bytes(path))
    os.makedirs(local_dir, exist_ok=True)
    return local_dir


def load_catalog(config: Config, transformed_dir: str) -> Catalog:
    """The catalog from ``items-*.tfrecord`` (first occurrence wins on duplicate ids)."""
    files = artifacts.require_split_files(transformed_dir, names.ITEMS_SPLIT)
    cols = read_columns(files, item_specs(config.schema))
    ids = cols[ITEM_KEY]
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)
    return Catalog(ids=[str(i) for i in ids[keep]], features={k: v[keep] for k, v in cols.items()})


def load_queries(config: Config, transformed_dir: str, split: str, mask_splits: tuple[str, ...],
                 catalog: Catalog, max_queries: int | None = None, seed: int = 0) -> QuerySet:
    """Distinct keys of ``split`` with their features, relevant and masked catalog positions.

    Keys whose relevant items are all outside the catalog are dropped. With
    ``max_queries`` set (not None or 0) and more eligible keys than that, the
    :func:`core.sampling.sample_keys` sample of them is kept (in first-seen order)
    and ``n_total`` says how many there were.

    Raises:
        ValueError: seen.jsonl is non-empty but shares no key with the split (the
            transform keyed it differently), which would silently disable masking.
    """
    files = artifacts.split_files(transformed_dir, split)
    schema = config.schema
    cols = read_columns(files, interaction_specs(schema))
    key_name = schema.query_key
    keys = cols[key_name]
    index = catalog.index
    first_row: dict[str, int] = {}
    relevant: dict[str, set[int]] = {}
    for row, (key, item) in enumerate(zip(keys, cols[ITEM_KEY])):
        pos = index.get(item)
        if key not in first_row:
            first_row[key] = row
            relevant[key] = set()
        if pos is not None:
            relevant[key].add(pos)
    eligible = [k for k in first_row if relevant[k]]
    ordered = sample_keys(eligible, max_queries, seed)

    seen = artifacts.read_seen(transformed_dir) if mask_splits else {}
    text_key = any(f.name == key_name and f.type == "text" for f in schema.query_features)
    matched = 0
    masked: list[np.ndarray] = []
    for key in ordered:
        entry_key = key if key in seen or not text_key else normalize_text(key)
        matched += entry_key in seen
        items = artifacts.seen_items(seen, entry_key, mask_splits)
        pos = {index[i] for i in items if i in index} - relevant[key]
        masked.append(np.array(sorted(pos), dtype=np.int64))
    if ordered and seen and matched == 0:
        raise ValueError(f"{transformed_dir}: none of the {split} keys appear in {names.SEEN_FILE}; "
                         f"cannot mask {'+'.join(mask_splits)} items")
    rows = np.array([first_row[k] for k in ordered], dtype=np.int64)
    feats = {s.name: cols[s.name][rows] for s in schema.query_features}
    return QuerySet(keys=ordered, features=feats,
                    relevant=[np.array(sorted(relevant[k]), dtype=np.int64) for k in ordered],
                    masked=masked, n_total=len(eligible))


def catalog_popularity(transformed_dir: str, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Train positives and popularity slice per catalog position.

    Slices are classified over the whole ``vocab/item_id.tsv`` in file order (count desc,
    then item id), so ties at a slice boundary break by item id, whatever the catalog order.

    Returns:
        (counts int64 [N], slices str [N]); a catalog item absent from the vocabulary
        counts 0 and is ``cold``.
    Raises:
        FileNotFoundError: no ``vocab/item_id.tsv``.
    """
    tokens, counts = artifacts.read_vocab(transformed_dir, ITEM_KEY)
    by_item = dict(zip(tokens, counts))
    slice_of = dict(zip(tokens, item_slices(counts)))
    return (np.array([by_item.get(item, 0) for item in catalog.ids], dtype=np.int64),
            np.array([slice_of.get(item, "cold") for item in catalog.ids], dtype=str))
