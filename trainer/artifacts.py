"""Readers for the transform stage's output folder (TensorFlow only for file I/O, lazily).

Layout (see docs/ARCHITECTURE.md, "transform"): ``<split>-*.tfrecord``,
``items-*.tfrecord``, ``vocab/<feature>.tsv``, ``stats.json``, ``seen.jsonl``.
Paths may be local folders or ``gs://`` prefixes: everything is read through
``tf.io.gfile`` (imported lazily).
"""

from __future__ import annotations

import json
from typing import Iterable

SPLITS = ("train", "valid", "test", "train_negatives", "items")
#: Inside a train stage's model folder: with train.refit, the early-stopped towers (train split
#: only), which evaluate scores; the folder's own query_tower/ item_tower/ are the refit ones.
HELDOUT_DIR = "heldout"


def evaluated_model_dir(model_dir: str) -> str:
    """The towers evaluation scores: ``<model_dir>/heldout`` when the model was refit on every
    split (scoring the refit one on the test split would score what it trained on), else
    ``model_dir`` itself."""
    from core import storage  # not tf.io.gfile: TF's GCS filesystem ignores the storage emulator

    heldout = _join(model_dir, HELDOUT_DIR)
    return heldout if storage.exists(_join(heldout, "query_tower", "saved_model.pb")) else model_dir


def _gfile():
    from trainer.tfenv import import_tf

    return import_tf().io.gfile


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def split_files(transformed_dir: str, split: str) -> list[str]:
    """Sorted ``<split>-*.tfrecord`` files (possibly empty)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return sorted(_gfile().glob(_join(transformed_dir, f"{split}-*.tfrecord")))


def require_split_files(transformed_dir: str, split: str) -> list[str]:
    """Like :func:`split_files` but raises when the split has no files."""
    files = split_files(transformed_dir, split)
    if not files:
        raise FileNotFoundError(f"{transformed_dir}: no {split}-*.tfrecord files")
    return files


def read_vocab(transformed_dir: str, feature: str) -> tuple[list[str], list[int]]:
    """Tokens and counts of ``vocab/<feature>.tsv`` in file order (count desc).

    Duplicate tokens (should not happen) keep their first occurrence so the lookup
    layer never sees a duplicate.
    """
    path = _join(transformed_dir, "vocab", f"{feature}.tsv")
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


def read_stats(transformed_dir: str) -> dict:
    """``stats.json`` as a dict (``{"numeric": {...}, "counts": {...}, ...}``)."""
    path = _join(transformed_dir, "stats.json")
    with _gfile().GFile(path, "r") as fh:
        return json.load(fh)


def numeric_stats(stats: dict, feature: str) -> tuple[float, float]:
    """(mean, std) of a numeric feature; a zero or missing std becomes 1 (no scaling)."""
    numeric = stats.get("numeric", {})
    if feature not in numeric:
        raise ValueError(f"stats.json: numeric.{feature} missing (needed to scale feature {feature!r})")
    mean = float(numeric[feature].get("mean", 0.0))
    std = float(numeric[feature].get("std", 1.0) or 0.0)
    return mean, (std if std > 0.0 else 1.0)


def query_feature_default(spec, stats: dict):
    """The raw value a query feature takes when a request does not carry it (the manifest's
    ``serving.defaults``, and ``train.anonymous_query_rate``'s stand-in): a numeric's train mean
    (0 after scaling), an empty history, "" for every string type (the unknown row, no tokens)."""
    if spec.type == "history":
        return []
    if spec.type == "numeric":
        return float(((stats.get("numeric") or {}).get(spec.name) or {}).get("mean", 0.0))
    return ""


def read_seen(transformed_dir: str) -> dict[str, dict[str, list[str]]]:
    """``seen.jsonl`` as ``{key: {"train": [...], "valid": [...], "test": [...]}}``."""
    path = _join(transformed_dir, "seen.jsonl")
    out: dict[str, dict[str, list[str]]] = {}
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(f"{transformed_dir}: seen.jsonl not found")
    with gfile.GFile(path, "r") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "key" not in row:
                raise ValueError(f"{path}:{lineno}: missing 'key'")
            out[str(row["key"])] = {s: [str(i) for i in row.get(s, [])] for s in ("train", "valid", "test")}
    return out


def seen_items(seen: dict, key: str, splits: Iterable[str]) -> set[str]:
    """Union of a key's item ids over ``splits`` (empty when the key is unknown)."""
    entry = seen.get(key)
    if entry is None:
        return set()
    return {item for s in splits for item in entry.get(s, [])}
