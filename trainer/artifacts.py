"""Readers for the transform stage's output folder (TensorFlow only for file I/O, lazily).

Layout (names in :mod:`core.contracts.files`; see docs/ARCHITECTURE.md, "transform"):
``<split>-*.tfrecord``, ``items-*.tfrecord``, ``vocab/<feature>.tsv``, ``stats.json``,
``seen.jsonl``. :class:`TransformedData` is the handle on one such folder (it caches what it
reads); the module-level readers take a folder string (or a handle) and are thin wrappers over
it. Paths may be local folders or ``gs://`` prefixes: everything is read through
``tf.io.gfile`` (imported lazily).
"""

from __future__ import annotations

import json
from typing import Iterable

from core.contracts import files as names

#: Every TFRecord family of the transform output (the positive splits, train_negatives, items).
SPLITS = names.RECORD_SPLITS
#: Inside a train stage's model folder: with train.refit, the early-stopped towers (train split
#: only), which evaluate scores; the folder's own query_tower/ item_tower/ are the refit ones.
HELDOUT_DIR = names.HELDOUT_DIR


def evaluated_model_dir(model_dir: str) -> str:
    """The towers evaluation scores: ``<model_dir>/heldout`` when the model was refit on every
    split (scoring the refit one on the test split would score what it trained on), else
    ``model_dir`` itself."""
    from core import storage  # not tf.io.gfile: TF's GCS filesystem ignores the storage emulator

    heldout = _join(model_dir, HELDOUT_DIR)
    complete = _join(heldout, names.QUERY_TOWER_DIR, names.SAVED_MODEL_FILE)
    return heldout if storage.exists(complete) else model_dir


def _gfile():
    from trainer.tfenv import import_tf

    return import_tf().io.gfile


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


class TransformedData:
    """The transform stage's output folder (local or gs://), read through ``tf.io.gfile``.

    One object to hand trainer code instead of a folder string: every path comes from
    :mod:`core.contracts.files`, and what is read once (``stats.json``, each vocabulary,
    ``seen.jsonl``) is cached on the handle, so a feature's vocabulary read by the model, the
    negative sampler and the evaluation set is read from disk once. The cached lists are
    shared: callers must not modify them.

    Args:
        root: the folder, or another handle (returned as is by :meth:`of`).
    """

    def __init__(self, root: str):
        if isinstance(root, TransformedData):
            root = root.root
        if not root:
            raise ValueError("TransformedData: root must be a folder or gs:// prefix, got an empty string")
        self.root = str(root)
        self._vocab: dict[str, tuple[list[str], list[int]]] = {}
        self._stats: dict | None = None
        self._seen: dict | None = None

    @classmethod
    def of(cls, data: "str | TransformedData") -> "TransformedData":
        """``data`` itself when it is a handle (keeping its caches), else a new handle on the folder."""
        return data if isinstance(data, TransformedData) else cls(data)

    def __repr__(self) -> str:
        return f"TransformedData({self.root!r})"

    def __str__(self) -> str:  # messages name the folder, as they did when it was a string
        return self.root

    def __fspath__(self) -> str:  # lets a handle stand where a folder path is expected
        return self.root

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """A file of the folder: ``rel`` is a :mod:`core.contracts.files` name."""
        return _join(self.root, rel)

    @property
    def stats_path(self) -> str:
        return self.path(names.TRANSFORM_STATS_FILE)

    @property
    def seen_path(self) -> str:
        return self.path(names.SEEN_FILE)

    def vocab_path(self, feature: str) -> str:
        return self.path(names.vocab_file(feature))

    # -- TFRecord splits -----------------------------------------------------------------------
    def split_files(self, split: str) -> list[str]:
        """Sorted ``<split>-*.tfrecord`` files (possibly empty); ``split`` in :data:`SPLITS`."""
        return sorted(_gfile().glob(self.path(names.split_pattern(split))))

    def require_split_files(self, split: str) -> list[str]:
        """Like :meth:`split_files` but raises when the split has no files."""
        files = self.split_files(split)
        if not files:
            raise FileNotFoundError(f"{self.root}: no {names.split_pattern(split)} files")
        return files

    # -- stats.json ----------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """``stats.json`` (``{"numeric": {...}, "counts": {...}, "split", ...}``), read once."""
        if self._stats is None:
            with _gfile().GFile(self.stats_path, "r") as fh:
                self._stats = json.load(fh)
        return self._stats

    @property
    def split_method(self):
        """How the transform split the interactions (``stats.json`` ``split``; None if unrecorded)."""
        return self.stats.get("split")

    @property
    def counts(self) -> dict:
        """Rows per TFRecord family and the catalog / query / cold-item counts (``stats.json`` ``counts``)."""
        return dict(self.stats.get("counts") or {})

    def numeric_stats(self, feature: str) -> tuple[float, float]:
        """(mean, std) of a numeric feature (see :func:`numeric_stats`)."""
        return numeric_stats(self.stats, feature)

    # -- vocabularies --------------------------------------------------------------------------
    def vocab(self, feature: str) -> tuple[list[str], list[int]]:
        """Tokens and counts of ``vocab/<feature>.tsv`` in file order (count desc), read once.

        Duplicate tokens (should not happen) keep their first occurrence so the lookup
        layer never sees a duplicate.
        """
        if feature not in self._vocab:
            self._vocab[feature] = _read_vocab_file(self.vocab_path(feature), feature)
        return self._vocab[feature]

    # -- seen.jsonl ----------------------------------------------------------------------------
    @property
    def seen(self) -> dict[str, dict[str, list[str]]]:
        """``seen.jsonl`` as ``{key: {"train": [...], "valid": [...], "test": [...]}}``, read once."""
        if self._seen is None:
            self._seen = _read_seen_file(self.seen_path, self.root)
        return self._seen


def _read_vocab_file(path: str, feature: str) -> tuple[list[str], list[int]]:
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(f"vocabulary for feature {feature!r} not found: {path}")
    tokens: list[str] = []
    counts: list[int] = []
    seen: set[str] = set()
    with gfile.GFile(path, "r") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            token, sep, count = line.rpartition("\t")
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected 'token<TAB>count'")
            if token in seen:
                continue
            seen.add(token)
            tokens.append(token)
            counts.append(int(float(count)))
    return tokens, counts


def _read_seen_file(path: str, root: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(f"{root}: {names.SEEN_FILE} not found")
    with gfile.GFile(path, "r") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "key" not in row:
                raise ValueError(f"{path}:{lineno}: missing 'key'")
            out[str(row["key"])] = {s: [str(i) for i in row.get(s, [])] for s in names.SPLITS}
    return out


# -- the folder-string readers (thin wrappers over a fresh handle: nothing cached between calls) --


def split_files(transformed_dir: "str | TransformedData", split: str) -> list[str]:
    """Sorted ``<split>-*.tfrecord`` files (possibly empty)."""
    return TransformedData.of(transformed_dir).split_files(split)


def require_split_files(transformed_dir: "str | TransformedData", split: str) -> list[str]:
    """Like :func:`split_files` but raises when the split has no files."""
    return TransformedData.of(transformed_dir).require_split_files(split)


def read_vocab(transformed_dir: "str | TransformedData", feature: str) -> tuple[list[str], list[int]]:
    """Tokens and counts of ``vocab/<feature>.tsv`` in file order (count desc)."""
    return TransformedData.of(transformed_dir).vocab(feature)


def read_stats(transformed_dir: "str | TransformedData") -> dict:
    """``stats.json`` as a dict (``{"numeric": {...}, "counts": {...}, ...}``)."""
    return TransformedData.of(transformed_dir).stats


def numeric_stats(stats: dict, feature: str) -> tuple[float, float]:
    """(mean, std) of a numeric feature; a zero or missing std becomes 1 (no scaling)."""
    numeric = stats.get("numeric", {})
    if feature not in numeric:
        raise ValueError(f"{names.TRANSFORM_STATS_FILE}: numeric.{feature} missing "
                         f"(needed to scale feature {feature!r})")
    mean = float(numeric[feature].get("mean", 0.0))
    std = float(numeric[feature].get("std", 1.0) or 0.0)
    return mean, (std if std > 0.0 else 1.0)


def query_feature_default(spec, stats: dict):
    """The raw value a query feature takes when a request does not carry it (the manifest's
    ``serving.defaults``, and ``train.anonymous_query_rate``'s stand-in): a numeric's train mean
    (0 after scaling), an empty history, the zero vector for an embedding, "" for every string
    type (the unknown row, no tokens)."""
    if spec.type == "history":
        return []
    if spec.type == "embedding":
        return [0.0] * int(spec.dims)  # ingest's missing vector
    if spec.type == "numeric":
        return float(((stats.get("numeric") or {}).get(spec.name) or {}).get("mean", 0.0))
    return ""


def query_inputs(schema, stats: dict | None = None) -> dict:
    """The query-feature part of the manifest's ``serving`` section (publishing/publish.py) and
    of the embed stage's query-vector branch (indexer/embed.py): the key, its type, every query
    feature described (type, a history's ``max_length``, an embedding's ``dims``; a computed
    embedding's ``source``, ``encoder`` and the model folder's ``checksum`` from stats.json) and its
    request default."""
    encoders = (stats or {}).get("encoders") or {}

    def described(f):
        own = {"history": {"max_length": f.max_length}, "embedding": {"dims": f.dims}}.get(f.type, {})
        if f.computed and f.type == "embedding":  # what serving encodes a request's text with, and must verify
            record = encoders.get(f.name) or {}
            own.update(source=list(f.source), encoder=f.encoder, checksum=record.get("checksum"))
        elif f.computed:  # the request's source text's word count, or its key's popularity
            own.update(source=list(f.source), derive=f.derive)
        return {"name": f.name, "type": f.type, **own}

    return {
        "query_key": schema.query_key,
        "query_key_type": next(f.type for f in schema.query_features if f.name == schema.query_key),
        "query_features": [described(f) for f in schema.query_features],
        "defaults": {f.name: query_feature_default(f, stats or {}) for f in schema.query_features},
    }


def read_seen(transformed_dir: "str | TransformedData") -> dict[str, dict[str, list[str]]]:
    """``seen.jsonl`` as ``{key: {"train": [...], "valid": [...], "test": [...]}}``."""
    return TransformedData.of(transformed_dir).seen


def seen_items(seen: dict, key: str, splits: Iterable[str]) -> set[str]:
    """Union of a key's item ids over ``splits`` (empty when the key is unknown)."""
    entry = seen.get(key)
    if entry is None:
        return set()
    return {item for s in splits for item in entry.get(s, [])}
