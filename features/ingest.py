"""Ingest: read the canonical dataset folder, validate it against the config schema,
route malformed rows to a dead-letter file and snapshot the clean tables as parquet.

Input (``config.data.path``, a local folder or a gs:// prefix; gs:// is downloaded to a
temporary folder first so both take one code path):

- ``interactions.{csv,parquet,jsonl}``: ``<query_key>``, ``item_id``, optional ``label``,
  ``rating``, ``timestamp``;
- ``items.*``: ``item_id`` + every item feature;
- ``users.*`` (optional): ``user_id`` + the user features.

Output (``out_dir``, see docs/ARCHITECTURE.md "ingest"): ``interactions.parquet``,
``items.parquet``, ``users.parquet`` (only when users.* exists), ``dead_letter.jsonl`` and
``ingest_stats.json``.

Validation is vectorised with pandas: each check yields a boolean mask over the rows, and
only the (few) rejected rows are touched one by one to write their dead letters.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from core import storage
from core.config import Config, FeatureSpec
from core.records import ITEM_KEY

#: Table names of the canonical dataset folder, in the order they are validated
#: (items before interactions, because interactions must reference known items).
TABLES = ("items", "users", "interactions")
FORMATS = ("csv", "parquet", "jsonl")
USER_KEY = "user_id"
LABEL, RATING, TIMESTAMP = "label", "rating", "timestamp"
DEAD_LETTER_FILE = "dead_letter.jsonl"
STATS_FILE = "ingest_stats.json"
#: How many dead-letter reasons a threshold error quotes.
_REASONS_IN_ERROR = 5


class IngestError(ValueError):
    """The input cannot be ingested; the message names the file (and row/field when known)."""


@dataclass
class _Table:
    """One validated table: clean rows, dead letters and counts."""

    name: str
    path: str  # as the user knows it (local path or gs:// URL)
    frame: pd.DataFrame  # clean rows only
    rows: int  # data rows read (bad included)
    dead: list[dict] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return len(self.dead)


# --------------------------------------------------------------------------- entry point


def ingest(config: Config, out_dir: str, data_date: Optional[str] = None, expected_fingerprint: str = "") -> dict:
    """Validate ``config.data.path`` and write the ingest artifacts to ``out_dir``.

    Args:
        config: ``data.path`` is the folder this run reads (already the day's partition
            when the dataset is partitioned).
        data_date: the partition date, recorded in the stats (None: unpartitioned).
        expected_fingerprint: the input fingerprint the run was launched with (empty: not
            known in advance); a different fingerprint means the data changed after the run
            was scheduled, and the run refuses it rather than train on unplanned input.

    Returns:
        The ``ingest_stats.json`` content plus ``seconds`` (wall time of the stage).

    Raises:
        IngestError: a file is missing, empty, lacks a required column, two formats of the
            same table exist, a table has no valid row, the fingerprint differs from
            ``expected_fingerprint``, or a file's bad-row fraction exceeds
            ``data.max_bad_fraction``. Dead letters are written before the threshold error.
    """
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="twotower-ingest-") as tmp:
        local_in = storage.download_tree(config.data.path, os.path.join(tmp, "in"))
        files = find_input_files(local_in, config.data.format, shown_root=config.data.path)
        fingerprint = fingerprint_files(files)
        if expected_fingerprint and fingerprint != expected_fingerprint:
            raise IngestError(f"{config.data.path}: input fingerprint {fingerprint[:12]} differs from "
                              f"{expected_fingerprint[:12]}, the one the run was launched with: the data "
                              "changed after the run was scheduled; launch a new run to use it")
        tables = _validate_all(config, files, local_in, config.data.path)
        with _staging(out_dir, tmp) as stage:
            stats = _write_outputs(stage, tables, fingerprint, data_date)
            _check_thresholds(tables, config.data.max_bad_fraction)
    stats["seconds"] = round(time.time() - started, 3)
    return stats


def fingerprint_input(data_path: str, fmt: str = "auto") -> str:
    """The fingerprint :func:`ingest` will compute for ``data_path`` (local or gs://).

    Schedulers call it before launching a run, so the run's inputs name its data exactly.
    """
    with tempfile.TemporaryDirectory(prefix="twotower-fingerprint-") as tmp:
        local_in = storage.download_tree(data_path, tmp)
        return fingerprint_files(find_input_files(local_in, fmt, shown_root=data_path))


# --------------------------------------------------------------------------- files


def find_input_files(folder: str, fmt: str, shown_root: Optional[str] = None) -> dict[str, str]:
    """Map table name -> local file path for interactions/items/users in ``folder``.

    ``fmt`` is ``auto`` (by extension) or one of csv/parquet/jsonl. ``users`` is optional.

    Raises:
        IngestError: a required table is missing or two formats of one table exist.
    """
    shown_root = shown_root or folder
    names = set(storage.list_children(folder)) if os.path.isdir(folder) else set()
    formats = FORMATS if fmt == "auto" else (fmt,)
    found: dict[str, str] = {}
    for table in TABLES:
        matches = [f"{table}.{ext}" for ext in formats if f"{table}.{ext}" in names]
        if len(matches) > 1:
            raise IngestError(f"{storage.join(shown_root, matches[0])}: ambiguous input, "
                              f"{' and '.join(matches)} both exist; keep one or set data.format")
        if matches:
            found[table] = os.path.join(folder, matches[0])
        elif table != "users":
            raise IngestError(f"{storage.join(shown_root, table + '.*')}: not found "
                              f"(expected {table}.{'|'.join(formats)} in {shown_root})")
    return found


def fingerprint_files(files: dict[str, str]) -> str:
    """sha256 over the input files' base names and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name, path in sorted((os.path.basename(p), p) for p in files.values()):
        digest.update(name.encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _staging(out_dir: str, tmp: str) -> Iterator[str]:
    """A local folder to write into; uploaded to ``out_dir`` afterwards when it is gs://."""
    if not storage.is_gcs(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        yield out_dir
        return
    stage = os.path.join(tmp, "out")
    os.makedirs(stage, exist_ok=True)
    try:
        yield stage
    finally:
        # Upload even when the threshold check raises: the dead letters are the diagnosis.
        storage.upload_tree(stage, out_dir)


# --------------------------------------------------------------------------- reading


def read_raw(path: str, shown: str) -> tuple[pd.DataFrame, list[int], list[dict]]:
    """Read one file without type coercion.

    Returns:
        (frame, row_numbers, dead): ``frame`` has one row per structurally valid record
        (csv cells are str; parquet/jsonl keep their native JSON/arrow types);
        ``row_numbers[i]`` is the 1-based data row of frame row i; ``dead`` are dead letters
        for records that could not be parsed at all (wrong field count, invalid JSON).

    Raises:
        IngestError: the file is empty or unreadable.
    """
    ext = path.rsplit(".", 1)[-1]
    if os.path.getsize(path) == 0:
        raise IngestError(f"{shown}: empty input file")
    if ext == "csv":
        frame, rows, dead = _read_csv(path, shown)
    elif ext == "jsonl":
        frame, rows, dead = _read_jsonl(path, shown)
    else:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types; re-raise with the file name
            raise IngestError(f"{shown}: not a readable parquet file: {exc}") from exc
        rows, dead = list(range(1, len(frame) + 1)), []
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) + len(dead) == 0:
        raise IngestError(f"{shown}: empty input file (no data rows)")
    return frame.reset_index(drop=True), rows, dead


def _read_csv(path: str, shown: str) -> tuple[pd.DataFrame, list[int], list[dict]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        records = list(csv.reader(fh))
    # csv.reader yields [] for blank lines; they are not data rows.
    numbered = [(i, r) for i, r in enumerate(records) if r]
    if not numbered:
        raise IngestError(f"{shown}: empty input file")
    header = numbered[0][1]
    keep, rows, dead = [], [], []
    for n, (_, rec) in enumerate(numbered[1:], start=1):
        if len(rec) != len(header):
            dead.append(_dead(shown, n, "*", f"expected {len(header)} fields, got {len(rec)}",
                              {"fields": rec}))
            continue
        keep.append(rec)
        rows.append(n)
    frame = pd.DataFrame(keep, columns=header, dtype=object)
    return frame, rows, dead


def _read_jsonl(path: str, shown: str) -> tuple[pd.DataFrame, list[int], list[dict]]:
    keep, rows, dead = [], [], []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                dead.append(_dead(shown, n, "*", f"invalid JSON: {exc.msg}", {"line": line.rstrip("\n")}))
                continue
            if not isinstance(obj, dict):
                dead.append(_dead(shown, n, "*", "not a JSON object", {"line": line.rstrip("\n")}))
                continue
            keep.append(obj)
            rows.append(n)
    frame = pd.DataFrame.from_records(keep) if keep else pd.DataFrame()
    return frame, rows, dead


# --------------------------------------------------------------------------- column checks


class _Checker:
    """Accumulates the first failure (field, reason) per row of one table, vectorised."""

    def __init__(self, frame: pd.DataFrame, rows: list[int], shown: str):
        self.frame = frame
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shown = shown
        n = len(frame)
        self.bad = np.zeros(n, dtype=bool)
        self.field = np.empty(n, dtype=object)
        self.reason = np.empty(n, dtype=object)

    def flag(self, mask: np.ndarray, field_name: str, reason) -> None:
        """Mark rows in ``mask`` bad unless already bad; ``reason`` is a str or an array."""
        new = np.asarray(mask, dtype=bool) & ~self.bad
        if not new.any():
            return
        self.bad |= new
        self.field[new] = field_name
        self.reason[new] = reason[new] if isinstance(reason, np.ndarray) else reason

    def dead_letters(self) -> list[dict]:
        idx = np.flatnonzero(self.bad)
        raws = self.frame.iloc[idx].to_dict("records") if len(idx) else []
        return [_dead(self.shown, int(self.rows[i]), self.field[i], self.reason[i], raw)
                for i, raw in zip(idx, raws)]


def _as_text(s: pd.Series) -> pd.Series:
    """Cells as nullable strings; integral floats (ids read from parquet/jsonl) lose the '.0'."""
    if pd.api.types.is_float_dtype(s.dtype):
        finite = s.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return s.astype("Int64").astype("string")
    elif pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("Int64").astype("string")
    return s.astype("string")


def _missing(text: pd.Series) -> np.ndarray:
    return (text.isna() | text.str.strip().eq("")).fillna(True).to_numpy(dtype=bool)


def _parse_numeric(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values float64 with NaN for missing, missing mask, unparseable-or-infinite mask)."""
    missing = _missing(text)
    values = pd.to_numeric(text.str.strip(), errors="coerce").astype("float64").to_numpy()
    bad = ~missing & ~np.isfinite(values)
    values = np.where(missing | bad, np.nan, values)
    return values, missing, bad


def _check_id(chk: _Checker, name: str) -> pd.Series:
    text = _as_text(chk.frame[name]).str.strip()
    chk.flag(_missing(text), name, f"empty {name}")
    return text.fillna("")


def _check_feature(chk: _Checker, spec: FeatureSpec) -> pd.Series:
    """One declared feature column -> clean values (str, or float64 for numerics).

    Missing values are not errors: the transform fills them (""/train mean).
    """
    text = _as_text(chk.frame[spec.name])
    if spec.type == "numeric":
        values, _, bad = _parse_numeric(text)
        shown = text.fillna("").to_numpy(dtype=object)
        chk.flag(bad, spec.name, np.array([f"not a number: {v!r}" for v in shown], dtype=object))
        return pd.Series(values, dtype="float64")
    if spec.type == "id":
        # An id-typed feature is not a key: a missing value is allowed (transform fills "").
        return text.str.strip().fillna("")
    return text.fillna("")


def _require_columns(frame: pd.DataFrame, required: list[str], shown: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise IngestError(f"{shown}: missing required column(s) {missing}; found {list(frame.columns)}")


# --------------------------------------------------------------------------- tables


def _validate_all(config: Config, files: dict[str, str], local_root: str, shown_root: str) -> dict[str, _Table]:
    schema = config.schema
    shown = {t: storage.join(shown_root, os.path.relpath(p, local_root)) for t, p in files.items()}
    tables: dict[str, _Table] = {}
    tables["items"] = _validate_items(files["items"], shown["items"], config)
    user_side = schema.query_key == USER_KEY and bool(schema.user_features)
    if user_side:
        if "users" not in files:
            raise IngestError(f"{storage.join(shown_root, 'users.*')}: not found, but the schema declares "
                              f"user features {[f.name for f in schema.user_features]}")
        tables["users"] = _validate_users(files["users"], shown["users"], config)
    known_items = set(tables["items"].frame[ITEM_KEY])
    tables["interactions"] = _validate_interactions(files["interactions"], shown["interactions"],
                                                    config, known_items)
    return tables


def _validate_items(path: str, shown: str, config: Config) -> _Table:
    """items.*: item_id + every item feature (+ display-only columns, carried as strings)."""
    return _validate_keyed_table(path, shown, "items", ITEM_KEY, config.schema.item_features,
                                 display_fields=config.schema.display_fields)


def _validate_users(path: str, shown: str, config: Config) -> _Table:
    """users.*: user_id + every user feature."""
    return _validate_keyed_table(path, shown, "users", USER_KEY, config.schema.user_features)


def _validate_keyed_table(path: str, shown: str, table: str, key: str, specs,
                          display_fields=()) -> _Table:
    """A table keyed by one id column: required columns, typed features, and duplicates of
    the key after the first valid row dead-lettered."""
    frame, rows, dead = read_raw(path, shown)
    _require_columns(frame, [key, *[f.name for f in specs]], shown)
    chk = _Checker(frame, rows, shown)
    out = {key: _check_id(chk, key)}
    for spec in specs:
        out[spec.name] = _check_feature(chk, spec)
    # Display-only columns travel along as strings (they are shown, never embedded).
    for name in display_fields:
        if name not in out and name in frame.columns:
            out[name] = _as_text(frame[name]).fillna("")
    _flag_duplicates(chk, out[key], key)
    return _finish(chk, out, table, shown, len(rows) + len(dead), dead)


def _validate_interactions(path: str, shown: str, config: Config, known_items: set[str]) -> _Table:
    """interactions.*: key + item_id required; label/rating/timestamp typed when present.

    For non-user keys (search queries) the other query features, if any, are interaction
    columns too (there is no users.* to look them up in).
    """
    schema = config.schema
    key_spec = next(f for f in schema.query_features if f.name == schema.query_key)
    extra = [] if schema.query_key == USER_KEY else schema.user_features
    frame, rows, dead = read_raw(path, shown)
    _require_columns(frame, [schema.query_key, ITEM_KEY, *[f.name for f in extra]], shown)
    chk = _Checker(frame, rows, shown)
    key_text = _as_text(frame[schema.query_key])
    if key_spec.type == "numeric":
        raise IngestError(f"{shown}: query_key {schema.query_key!r} cannot be numeric")
    chk.flag(_missing(key_text), schema.query_key, f"empty {schema.query_key}")
    out = {schema.query_key: key_text.str.strip().fillna("") if key_spec.type == "id" else key_text.fillna("")}
    item_ids = _check_id(chk, ITEM_KEY)
    out[ITEM_KEY] = item_ids
    out[LABEL] = _check_label(chk, frame)
    if RATING in frame.columns:
        values, _, bad = _parse_numeric(_as_text(frame[RATING]))
        chk.flag(bad, RATING, "rating is not a number")
        out[RATING] = pd.Series(values, dtype="float64")
    if TIMESTAMP in frame.columns:
        out[TIMESTAMP] = _check_timestamp(chk, frame)
    for spec in extra:
        out[spec.name] = _check_feature(chk, spec)
    chk.flag(~item_ids.isin(known_items).to_numpy(dtype=bool), ITEM_KEY, "unknown item_id")
    return _finish(chk, out, "interactions", shown, len(rows) + len(dead), dead)


def _check_label(chk: _Checker, frame: pd.DataFrame) -> pd.Series:
    """label column -> int64 0/1 (all 1 when the column is absent: every row is a positive)."""
    if LABEL not in frame.columns:
        return pd.Series(np.ones(len(frame), dtype=np.int64))
    values, missing, bad = _parse_numeric(_as_text(frame[LABEL]))
    chk.flag(missing | bad | ~np.isin(values, (0.0, 1.0)), LABEL, "label must be 0 or 1")
    return pd.Series(np.nan_to_num(values, nan=0.0).astype(np.int64))


def _check_timestamp(chk: _Checker, frame: pd.DataFrame) -> pd.Series:
    """timestamp column -> int64 unix seconds; missing, fractional or non-numeric is bad."""
    values, missing, bad = _parse_numeric(_as_text(frame[TIMESTAMP]))
    chk.flag(missing, TIMESTAMP, "missing timestamp")
    fractional = ~missing & ~bad & (np.mod(np.nan_to_num(values), 1) != 0)
    chk.flag(bad | fractional, TIMESTAMP, "timestamp is not an integer")
    return pd.Series(np.nan_to_num(values, nan=0.0).astype(np.int64))


def _flag_duplicates(chk: _Checker, ids: pd.Series, name: str) -> None:
    """Keep the first valid row per id; later valid rows with the same id are dead letters."""
    valid = ~chk.bad
    dup = np.zeros(len(ids), dtype=bool)
    dup[valid] = ids[valid].duplicated(keep="first").to_numpy(dtype=bool)
    chk.flag(dup, name, f"duplicate {name} (first occurrence kept)")


def _finish(chk: _Checker, out: dict[str, pd.Series], name: str, shown: str,
            rows: int, dead: list[dict]) -> _Table:
    dead = sorted(dead + chk.dead_letters(), key=lambda d: d["row"])
    clean = pd.DataFrame({c: s.reset_index(drop=True) for c, s in out.items()})
    clean = clean.loc[~chk.bad].reset_index(drop=True)
    for col in clean.columns:
        if not pd.api.types.is_numeric_dtype(clean[col].dtype):
            clean[col] = clean[col].astype(str)
    if clean.empty:
        reasons = "; ".join(f"row {d['row']} {d['field']}: {d['reason']}" for d in dead[:_REASONS_IN_ERROR])
        raise IngestError(f"{shown}: no valid rows out of {rows} ({reasons})")
    return _Table(name=name, path=shown, frame=clean, rows=rows, dead=dead)


# --------------------------------------------------------------------------- outputs


def _dead(shown: str, row: int, field_name: str, reason: str, raw: dict) -> dict:
    return {"file": shown, "row": int(row), "field": field_name, "reason": str(reason), "raw": _jsonable(raw)}


def _jsonable(value):
    """Raw cells -> JSON-safe values (NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is None:
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _write_outputs(out_dir: str, tables: dict[str, _Table], fingerprint: str,
                   data_date: Optional[str] = None) -> dict:
    for name in TABLES:
        path = os.path.join(out_dir, f"{name}.parquet")
        if name in tables:
            tables[name].frame.to_parquet(path, index=False)
        elif os.path.exists(path):
            # A users.parquet left by an earlier run into this folder must not be picked up.
            os.remove(path)
    lines = [json.dumps(d, sort_keys=True) for t in TABLES if t in tables for d in tables[t].dead]
    storage.write_text(os.path.join(out_dir, DEAD_LETTER_FILE), "".join(line + "\n" for line in lines))
    total = sum(t.rows for t in tables.values())
    bad = sum(t.bad for t in tables.values())
    stats = {
        "files": {t.name: {"path": t.path, "rows": t.rows, "ok": len(t.frame), "bad": t.bad}
                  for t in (tables[n] for n in TABLES if n in tables)},
        "bad_fraction": bad / total if total else 0.0,
        "fingerprint": fingerprint,
        "data_date": data_date,
    }
    storage.write_text(os.path.join(out_dir, STATS_FILE), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _check_thresholds(tables: dict[str, _Table], max_bad_fraction: float) -> None:
    """Raise for the first file whose bad-row fraction exceeds the configured maximum."""
    for name in TABLES:
        table = tables.get(name)
        if table is None or table.bad / table.rows <= max_bad_fraction:
            continue
        reasons = "; ".join(f"row {d['row']} {d['field']}: {d['reason']}" for d in table.dead[:_REASONS_IN_ERROR])
        raise IngestError(f"{table.path}: {table.bad} of {table.rows} rows are bad "
                          f"({table.bad / table.rows:.2%} > data.max_bad_fraction {max_bad_fraction:.2%}); "
                          f"first reasons: {reasons}; see {DEAD_LETTER_FILE}")
