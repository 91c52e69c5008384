"""Model-free retrieval baselines and the next-item evaluation protocols (MovieLens-100K).

    .venv/bin/python bench/baselines.py --dataset DIR --protocol last_item
    .venv/bin/python bench/baselines.py --dataset DIR --protocol cold_users [--fraction 0.1]

``DIR`` is a canonical dataset folder (``interactions.csv`` with ``user_id,item_id,rating,
timestamp``, ``users.csv``, ``items.csv`` with ``item_id`` first) or a raw MovieLens-100K folder
(``u.data`` ...), which is converted first with ``datagen.movielens.convert_movielens``.

Order. A user's sequence is their interactions sorted by (timestamp, item_id compared as a
*string*): the project's tie rule, so ``"10"`` comes before ``"9"`` at equal timestamps.
Ties on both keys keep the file order (stable sort).

Protocols (the split is written as a complete dataset folder, so the pipeline can train on it):

- ``last_item``: each user with >= 2 interactions loses their last one (:func:`last_item_holdout`).
  Query = that user; history = their whole remaining sequence, seen = its items (masked),
  target = the held-out item. Training = every user's remaining sequence.
- ``cold_users``: an md5-hashed ``fraction`` of the users with >= n_history + n_next
  interactions is removed from training entirely (:func:`cold_user_split`). Query = first
  ``n_history`` (5) items, seen = those, targets = the following ``n_next`` (10).
  Training = the remaining users.

Baselines (each a dense float32 score matrix [n_queries, n_items] over an item list):

- popularity: training interaction count of each item (same row for every query);
- EASE (Steck 2019), l2 chosen by recall@10 on an inner last-item holdout of the training
  sequences (never the evaluation holdout);
- transition: count of directed a -> b (b directly after a in a training sequence), summed
  over the query's last ``last_n`` items; ``last_n`` = 3 and chosen on the inner holdout.

Metrics (:func:`recall_at_k`): seen items masked, top K with ties broken by item position
(lower position first), recall = |top K ∩ targets| / |targets| (the hit rate for one target),
binary NDCG; both averaged over queries.

Pure numpy + pandas (scipy is not installed in the venv; the transition counts use a small
numpy CSR instead of scipy.sparse).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

INTERACTIONS = "interactions.csv"
EASE_GRID = (50, 100, 200, 500, 1000)
LAST_N_GRID = (1, 2, 3, 5)
#: EASE inverts a dense [n_items, n_items] float64 Gram matrix: 20,000 items is already
#: 3.2 GB per copy, so past this the closed form is refused rather than swapping the machine.
EASE_MAX_ITEMS = 20_000
#: Rows of the score matrix ranked at once in recall_at_k (bounds the int64 argsort buffer).
_RANK_BLOCK = 1024


# --------------------------------------------------------------------------------------------
# Ordering
# --------------------------------------------------------------------------------------------

def _ordered_rows(interactions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions (0-based, into ``interactions``) of each user, in sequence order.

    Users appear in order of their first row in the frame; within a user rows are sorted by
    (timestamp numerically, item_id as a string, row position): the last key makes equal
    (timestamp, item) rows keep their file order.
    """
    for column in ("user_id", "item_id", "timestamp"):
        if column not in interactions.columns:
            raise ValueError(f"interactions lack column {column!r} "
                             f"(have {list(interactions.columns)})")
    users = interactions["user_id"].astype(str).to_numpy()
    # numpy compares unicode arrays by code point, exactly as Python compares str.
    items = interactions["item_id"].astype(str).to_numpy()
    stamps = pd.to_numeric(interactions["timestamp"], errors="coerce").to_numpy()
    if np.isnan(stamps.astype(np.float64)).any():
        bad = int(np.flatnonzero(np.isnan(stamps.astype(np.float64)))[0])
        raise ValueError(f"row {bad}: timestamp {interactions['timestamp'].iloc[bad]!r} "
                         f"is not a number")
    codes, uniques = pd.factorize(users)  # codes follow first appearance
    rows = np.arange(len(users))
    order = np.lexsort((rows, items, stamps, codes))  # last key is the primary one
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, bounds) if len(order) else []
    return {str(uniques[codes[g[0]]]): g for g in groups}


def time_ordered(interactions: pd.DataFrame) -> dict[str, list[str]]:
    """Each user's items in sequence order: ``{user_id: [item_id, ...]}`` (str ids).

    Args:
        interactions: DataFrame with ``user_id``, ``item_id`` (str or int) and ``timestamp``
            (unix seconds, int or numeric str); other columns are ignored.

    Order: (timestamp, item_id compared as a string), then file order; users in order of
    their first row.
    """
    items = interactions["item_id"].astype(str).to_numpy()
    return {user: items[rows].tolist() for user, rows in _ordered_rows(interactions).items()}


# --------------------------------------------------------------------------------------------
# Splits (written as complete dataset folders)
# --------------------------------------------------------------------------------------------

@dataclass
class _RawCsv:
    """A CSV kept as its raw record texts, so a filtered copy is byte-identical row by row."""

    header_text: str
    header: list[str]
    records: list[tuple[list[str], str]]  # (fields, raw text incl. line ending)
    other: list[tuple[int, str]]  # (index in records before which it stood, blank line text)


def _read_raw_csv(path: str) -> _RawCsv:
    """Parse ``path`` with the csv module while keeping each record's exact source text.

    csv.reader pulls one physical line at a time (more only inside a quoted field), so the
    lines consumed between two records are exactly that record's text.
    """
    consumed: list[str] = []

    def lines(fh):
        for line in fh:
            consumed.append(line)
            yield line

    records, other, header, header_text = [], [], None, ""
    with open(path, encoding="utf-8", newline="") as fh:
        for fields in csv.reader(lines(fh)):
            text = "".join(consumed)
            consumed.clear()
            if not fields:  # a blank line: not a row, but kept where it stood
                other.append((len(records), text))
            elif header is None:
                header, header_text = fields, text
            else:
                records.append((fields, text))
    if header is None:
        raise ValueError(f"{path} is empty (no header)")
    return _RawCsv(header_text, header, records, other)


def _frame(raw: _RawCsv) -> pd.DataFrame:
    """The records as a DataFrame of strings (short rows padded, as pandas would read them)."""
    width = len(raw.header)
    rows = [(fields + [""] * width)[:width] for fields, _ in raw.records]
    return pd.DataFrame(rows, columns=raw.header, dtype=str)


def _write_filtered(raw: _RawCsv, drop: set[int], path: str) -> int:
    """Write ``raw`` to ``path`` without the record positions in ``drop``; returns rows kept."""
    blanks: dict[int, list[str]] = {}
    for before, text in raw.other:
        blanks.setdefault(before, []).append(text)
    kept = 0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(raw.header_text)
        for index, (_, text) in enumerate(raw.records):
            fh.writelines(blanks.get(index, ()))
            if index not in drop:
                fh.write(text)
                kept += 1
        fh.writelines(blanks.get(len(raw.records), ()))
    return kept


def _prepare_out(dataset_dir: str, out_dir: str) -> None:
    """Create ``out_dir`` and copy every entry of ``dataset_dir`` but interactions.csv into it."""
    src, dst = Path(dataset_dir).resolve(), Path(out_dir).resolve()
    if dst == src or src in dst.parents:
        # Copying a folder into itself would recurse (and overwrite the source split).
        raise ValueError(f"out_dir {out_dir} must not be {dataset_dir} or inside it")
    if not (src / INTERACTIONS).is_file():
        raise FileNotFoundError(f"{src / INTERACTIONS} not found")
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name == INTERACTIONS:
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dst / entry.name)


def _write_jsonl(path: str, rows: Iterable[dict]) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """The rows of a holdout file written by :func:`last_item_holdout` / :func:`cold_user_split`."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def last_item_holdout(dataset_dir: str, out_dir: str, holdout_path: str) -> dict:
    """Leave-last-out split: ``out_dir`` = ``dataset_dir`` minus each user's last interaction.

    ``out_dir`` is a complete dataset folder: every file and folder other than
    interactions.csv is copied unchanged; interactions.csv keeps its header, columns, row
    texts and row order, only without the held-out rows. Users with fewer than 2
    interactions hold nothing out (they would be left without history).

    ``holdout_path`` gets one JSON line ``{"user_id": str, "item_id": str}`` per held-out
    user, users in order of their first row in interactions.csv.

    Returns: ``{"users", "held_out", "interactions", "kept_interactions"}`` (counts).
    """
    raw = _read_raw_csv(os.path.join(dataset_dir, INTERACTIONS))
    frame = _frame(raw)
    items = frame["item_id"].to_numpy()
    by_user = _ordered_rows(frame)
    held = {user: int(rows[-1]) for user, rows in by_user.items() if len(rows) >= 2}
    _prepare_out(dataset_dir, out_dir)
    kept = _write_filtered(raw, set(held.values()), os.path.join(out_dir, INTERACTIONS))
    _write_jsonl(holdout_path, ({"user_id": user, "item_id": str(items[row])}
                                for user, row in held.items()))
    return {"users": len(by_user), "held_out": len(held), "interactions": len(raw.records),
            "kept_interactions": kept}


def user_bucket(user_id: str, seed: int) -> float:
    """Stable uniform value in [0, 1) for a user: md5 of seed + user id, never Python's hash()
    (which is salted per process). Same construction as features.transform.item_bucket.
    """
    digest = hashlib.md5(f"{seed}\x1f{user_id}".encode("utf-8")).hexdigest()
    return int(digest[:15], 16) / float(16 ** 15)


def cold_user_split(dataset_dir: str, out_dir: str, holdout_path: str, fraction: float = 0.1,
                    seed: int = 0, n_history: int = 5, n_next: int = 10) -> dict:
    """Cold users: a hashed share of the long-enough users leaves training entirely.

    A user is cold when they have >= ``n_history + n_next`` interactions and
    ``user_bucket(user_id, seed) < fraction``: each user's draw is independent of the others,
    so the cold count is about ``fraction`` x eligible, not exactly. ``out_dir`` is a
    complete dataset folder (all files copied; users.csv still lists the cold users) whose
    interactions.csv has none of their rows (other rows byte-identical, in order).

    ``holdout_path`` gets one JSON line per cold user (first-row order):
    ``{"user_id", "history": [first n_history items], "next": [the following n_next items]}``
    in sequence order; their later interactions are used nowhere.

    Returns: ``{"users", "eligible_users", "cold_users", "interactions", "kept_interactions"}``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if n_history < 1 or n_next < 1:
        raise ValueError(f"n_history and n_next must be >= 1, got {n_history}, {n_next}")
    raw = _read_raw_csv(os.path.join(dataset_dir, INTERACTIONS))
    frame = _frame(raw)
    items = frame["item_id"].to_numpy()
    by_user = _ordered_rows(frame)
    eligible = [u for u, rows in by_user.items() if len(rows) >= n_history + n_next]
    cold = [u for u in eligible if user_bucket(u, seed) < fraction]
    drop = {int(r) for u in cold for r in by_user[u]}
    _prepare_out(dataset_dir, out_dir)
    kept = _write_filtered(raw, drop, os.path.join(out_dir, INTERACTIONS))
    rows = []
    for user in cold:
        sequence = items[by_user[user]].tolist()
        rows.append({"user_id": user, "history": sequence[:n_history],
                     "next": sequence[n_history:n_history + n_next]})
    _write_jsonl(holdout_path, rows)
    return {"users": len(by_user), "eligible_users": len(eligible), "cold_users": len(cold),
            "interactions": len(raw.records), "kept_interactions": kept}


# --------------------------------------------------------------------------------------------
# Baseline scorers
# --------------------------------------------------------------------------------------------

def _index(items: Sequence) -> dict[str, int]:
    """Item id (as str) -> position in ``items``; duplicate ids are an error (ambiguous rows)."""
    index = {str(item): pos for pos, item in enumerate(items)}
    if len(index) != len(items):
        raise ValueError("items has duplicate ids")
    return index


def _positions(sequence: Iterable, index: Mapping[str, int]) -> list[int]:
    """Positions of the known items of ``sequence``, in order (ids outside ``items`` skipped:
    they can be neither scored nor recommended)."""
    return [index[s] for s in map(str, sequence) if s in index]


def _binary_matrix(sequences: Iterable[Sequence], index: Mapping[str, int]) -> np.ndarray:
    """float64 [n_sequences, n_items]: 1 where the sequence holds the item (repeats count once)."""
    sequences = list(sequences)
    matrix = np.zeros((len(sequences), len(index)), dtype=np.float64)
    for row, sequence in enumerate(sequences):
        matrix[row, _positions(sequence, index)] = 1.0
    return matrix


def popularity_scores(train_sequences: Mapping[str, Sequence], items: Sequence,
                      n_queries: int) -> np.ndarray:
    """float32 [n_queries, n_items]: each item's interaction count over all training sequences
    (repeats counted), the same row for every query."""
    index = _index(items)
    counts = np.zeros(len(index), dtype=np.float32)
    for sequence in train_sequences.values():
        np.add.at(counts, _positions(sequence, index), 1.0)
    return np.repeat(counts[None, :], n_queries, axis=0)


def _ease_gram(train_sequences: Mapping[str, Sequence], index: Mapping[str, int]) -> np.ndarray:
    """float64 [n_items, n_items]: X^T X for the binary training user x item matrix X."""
    if len(index) > EASE_MAX_ITEMS:
        raise ValueError(f"EASE needs a dense {len(index)} x {len(index)} inverse; "
                         f"refused above {EASE_MAX_ITEMS} items")
    x = _binary_matrix(train_sequences.values(), index)
    return x.T @ x


def _ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's closed form: P = (G + l2 I)^-1, B = -P / diag(P) (column j divided by P_jj),
    diag(B) = 0. float64 [n_items, n_items]; score of item j = x_query . B[:, j]."""
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (G alone is singular for unseen items), got {l2}")
    g = gram.copy()
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    weights = p / (-np.diag(p))[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def ease_scores(train_sequences: Mapping[str, Sequence], items: Sequence,
                query_histories: Sequence[Sequence], l2: float) -> np.ndarray:
    """EASE (Steck 2019) scores, float32 [n_queries, n_items].

    X: binary [n_train_users, n_items]; G = X^T X + l2 I; P = G^-1; B = -P / diag(P) with a
    zero diagonal (an item may not explain itself); scores = x_query B, x_query the query's
    binary history over ``items``.
    """
    index = _index(items)
    weights = _ease_weights(_ease_gram(train_sequences, index), l2)
    return (_binary_matrix(query_histories, index) @ weights).astype(np.float32)


@dataclass
class Transitions:
    """Directed transition counts a -> b in CSR form over item positions.

    Row a's successors are ``indices[indptr[a]:indptr[a + 1]]`` with counts ``counts[...]``.
    A dense [n_items, n_items] array would be fine for ML-100K (1,682 items: 11 MB float32),
    but memory O(non-zero pairs) keeps a large catalog usable without scipy.sparse, which is
    not installed in the venv.
    """

    n_items: int
    indptr: np.ndarray  # int64 [n_items + 1]
    indices: np.ndarray  # int64 [nnz]
    counts: np.ndarray  # float32 [nnz]

    def dense(self) -> np.ndarray:
        """float32 [n_items, n_items], C[a, b] = count(a -> b) (for tests and small catalogs)."""
        out = np.zeros((self.n_items, self.n_items), dtype=np.float32)
        rows = np.repeat(np.arange(self.n_items), np.diff(self.indptr))
        out[rows, self.indices] = self.counts
        return out


def transition_counts(train_sequences: Mapping[str, Sequence], items: Sequence,
                      exclude_users: Optional[Iterable[str]] = None) -> Transitions:
    """Count a -> b over every training sequence where b directly follows a.

    "Directly" is in the raw sequence: a pair with an item outside ``items`` is skipped, not
    bridged (dropping the unknown item first would invent a transition). Sequences of
    ``exclude_users`` are not counted.
    """
    index = _index(items)
    n = len(index)
    excluded = {str(u) for u in (exclude_users or ())}
    sources, targets = [], []
    for user, sequence in train_sequences.items():
        if str(user) in excluded:
            continue
        pos = np.array([index.get(str(s), -1) for s in sequence], dtype=np.int64)
        if len(pos) < 2:
            continue
        a, b = pos[:-1], pos[1:]
        ok = (a >= 0) & (b >= 0)
        sources.append(a[ok])
        targets.append(b[ok])
    a = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    b = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    codes, counts = np.unique(a * n + b, return_counts=True)  # sorted by (a, b)
    rows = codes // n
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    return Transitions(n, indptr, (codes % n).astype(np.int64), counts.astype(np.float32))


def _score_transitions(transitions: Transitions, index: Mapping[str, int],
                       query_histories: Sequence[Sequence], last_n: int) -> np.ndarray:
    """float32 [n_queries, n_items]: sum of C[a, :] over the last ``last_n`` known items a."""
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    scores = np.zeros((len(query_histories), transitions.n_items), dtype=np.float32)
    ptr, idx, cnt = transitions.indptr, transitions.indices, transitions.counts
    for row, history in enumerate(query_histories):
        for a in _positions(history, index)[-last_n:]:
            # Column indices within one CSR row are unique, so fancy-index += is exact.
            scores[row, idx[ptr[a]:ptr[a + 1]]] += cnt[ptr[a]:ptr[a + 1]]
    return scores


def transition_scores(train_sequences: Mapping[str, Sequence], items: Sequence,
                      query_histories: Sequence[Sequence], last_n: int = 3,
                      exclude_users: Optional[Iterable[str]] = None) -> np.ndarray:
    """Transition baseline, float32 [n_queries, n_items].

    score(query, b) = sum over the last ``last_n`` items a of the query's history (each
    position counted; ids outside ``items`` dropped before taking the last ``last_n``) of
    count(a -> b) in the training sequences (:func:`transition_counts`).
    """
    index = _index(items)
    return _score_transitions(transition_counts(train_sequences, items, exclude_users),
                              index, query_histories, last_n)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def recall_at_k(scores: np.ndarray, targets: Sequence[Iterable[int]],
                seen: Sequence[Iterable[int]], k: int = 10) -> dict:
    """Recall@K and NDCG@K over queries, seen items masked.

    Args:
        scores: float [n_queries, n_items]; not modified.
        targets: per query, the item positions to retrieve (non-empty; repeats count once).
        seen: per query, item positions excluded from the ranking (score set to -inf); a
            target that is also seen can never be hit.
        k: depth.

    Ranking: score descending, ties broken by item position ascending (a stable argsort of
    the negated scores), so the result does not depend on numpy's partition internals.
    recall = |top K ∩ targets| / |targets| (the hit rate when there is one target);
    ndcg = sum over hits at rank r (1-based) of 1 / log2(r + 1), divided by the same sum
    over ranks 1..min(K, |targets|). Both are plain means over queries.

    Returns: ``{"recall_at_<k>": float, "ndcg_at_<k>": float, "queries": int}``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_queries, n_items], got shape {scores.shape}")
    n_queries, n_items = scores.shape
    if len(targets) != n_queries or len(seen) != n_queries:
        raise ValueError(f"{n_queries} score rows but {len(targets)} targets, {len(seen)} seen")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN (the ranking would be undefined)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    depth = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    recall = ndcg = 0.0
    for start in range(0, n_queries, _RANK_BLOCK):
        block = -scores[start:start + _RANK_BLOCK].astype(np.float64)  # a copy, negated
        for row in range(len(block)):
            block[row, list(seen[start + row])] = np.inf  # -(-inf): sorts last
        top = np.argsort(block, axis=1, kind="stable")[:, :depth]
        for row in range(len(block)):
            wanted = set(int(t) for t in targets[start + row])
            if not wanted:
                raise ValueError(f"query {start + row} has no target")
            ranked = top[row]
            hit = np.array([int(i) in wanted and np.isfinite(block[row, i]) for i in ranked])
            recall += hit.sum() / len(wanted)
            ndcg += discounts[hit].sum() / discounts[:min(depth, len(wanted))].sum()
    return {f"recall_at_{k}": recall / max(n_queries, 1), f"ndcg_at_{k}": ndcg / max(n_queries, 1),
            "queries": n_queries}


# --------------------------------------------------------------------------------------------
# Hyper-parameter choice (inner holdout) and evaluation
# --------------------------------------------------------------------------------------------

Query = tuple[list, list, set]  # (history item ids in order, target item ids, seen item ids)


def inner_last_item_holdout(train_sequences: Mapping[str, Sequence]
                            ) -> tuple[dict[str, list], list[Query]]:
    """Leave-last-out inside the training sequences, for choosing hyper-parameters.

    Returns ``(inner_train, queries)``: each sequence of >= 2 items loses its last item,
    which becomes that user's query ``(rest, [last], set(rest))``; shorter ones stay whole.
    """
    inner, queries = {}, []
    for user, sequence in train_sequences.items():
        sequence = list(sequence)
        if len(sequence) >= 2:
            inner[user] = sequence[:-1]
            queries.append((sequence[:-1], [sequence[-1]], set(sequence[:-1])))
        else:
            inner[user] = sequence
    return inner, queries


def _query_positions(queries: Sequence[Query], index: Mapping[str, int]
                     ) -> tuple[list[list[int]], list[list[int]]]:
    """(targets, seen) as item positions; a target outside the catalog is an error, since it
    could never be retrieved and would silently cap recall."""
    targets, seen = [], []
    for number, (_, wanted, masked) in enumerate(queries):
        missing = [t for t in map(str, wanted) if t not in index]
        if missing:
            raise ValueError(f"query {number}: target(s) {missing[:5]} not in items")
        targets.append([index[str(t)] for t in wanted])
        seen.append(_positions(masked, index))
    return targets, seen


def _choose(score_fn, grid: Sequence, train_sequences: Mapping[str, Sequence], items: Sequence,
            k: int, prepare) -> tuple:
    """Grid value with the best inner-holdout recall@k (first in grid on ties) and the table.

    ``prepare(inner_train, index)`` builds what the grid shares (EASE's Gram matrix, the
    transition counts) once; ``score_fn(prepared, index, histories, value)`` scores.
    """
    inner, queries = inner_last_item_holdout(train_sequences)
    if not queries:
        raise ValueError("no training sequence has 2 items: nothing to choose on")
    index = _index(items)
    targets, seen = _query_positions(queries, index)
    histories = [q[0] for q in queries]
    prepared = prepare(inner, index)
    table = {}
    for value in grid:
        scores = score_fn(prepared, index, histories, value)
        table[value] = recall_at_k(scores, targets, seen, k)[f"recall_at_{k}"]
    best = max(grid, key=lambda v: (table[v], -list(grid).index(v)))
    return best, table


def choose_ease_l2(train_sequences: Mapping[str, Sequence], items: Sequence,
                   grid: Sequence[float] = EASE_GRID, k: int = 10) -> tuple[float, dict]:
    """EASE's l2 by recall@k on :func:`inner_last_item_holdout` of ``train_sequences``.

    Returns ``(best l2, {l2: inner recall@k})``; ties go to the earlier grid value.
    """
    return _choose(
        lambda gram, index, hist, l2: _binary_matrix(hist, index) @ _ease_weights(gram, l2),
        grid, train_sequences, items, k,
        lambda inner, index: _ease_gram(inner, index))


def choose_last_n(train_sequences: Mapping[str, Sequence], items: Sequence,
                  grid: Sequence[int] = LAST_N_GRID, k: int = 10) -> tuple[int, dict]:
    """The transition baseline's last_n by inner-holdout recall@k, as :func:`choose_ease_l2`."""
    return _choose(
        lambda counts, index, hist, n: _score_transitions(counts, index, hist, n),
        grid, train_sequences, items, k,
        lambda inner, index: transition_counts(inner, list(index)))


def evaluate_baselines(train_sequences: Mapping[str, Sequence], items: Sequence,
                       queries: Sequence[Query], k: int = 10,
                       ease_grid: Sequence[float] = EASE_GRID,
                       last_n_grid: Sequence[int] = LAST_N_GRID) -> dict:
    """Every baseline on ``queries``: recall@k and ndcg@k, chosen hyper-parameters, seconds.

    Args:
        train_sequences: ``{user: [item, ...]}`` in sequence order (the training split).
        items: the catalog, one id per score column.
        queries: ``(history in order, targets, seen)`` per query, item ids.

    Returns ``{"queries", "items", "train_users", "k", "popularity", "ease",
    "transition_last3", "transition_chosen"}``; each baseline entry holds
    ``recall_at_<k>``, ``ndcg_at_<k>``, ``seconds`` (choosing + scoring + ranking) and, where
    chosen, the value and ``inner_recall_at_<k>`` per grid value.
    """
    index = _index(items)
    targets, seen = _query_positions(queries, index)
    histories = [q[0] for q in queries]
    out = {"queries": len(queries), "items": len(index), "train_users": len(train_sequences),
           "k": k}

    def measure(name: str, started: float, scores: np.ndarray, **extra) -> None:
        metrics = recall_at_k(scores, targets, seen, k)
        metrics.pop("queries")
        out[name] = {**metrics, **extra, "seconds": time.perf_counter() - started}

    def table(values: dict) -> dict:
        return {f"inner_recall_at_{k}": {str(v): r for v, r in values.items()}}

    started = time.perf_counter()
    measure("popularity", started, popularity_scores(train_sequences, items, len(queries)))

    started = time.perf_counter()
    l2, by_l2 = choose_ease_l2(train_sequences, items, ease_grid, k)
    measure("ease", started, ease_scores(train_sequences, items, histories, l2), l2=l2,
            **table(by_l2))

    started = time.perf_counter()
    measure("transition_last3", started,
            transition_scores(train_sequences, items, histories, last_n=3), last_n=3)

    started = time.perf_counter()
    last_n, by_n = choose_last_n(train_sequences, items, last_n_grid, k)
    measure("transition_chosen", started,
            transition_scores(train_sequences, items, histories, last_n=last_n),
            last_n=last_n, **table(by_n))
    return out


# --------------------------------------------------------------------------------------------
# Protocols end to end
# --------------------------------------------------------------------------------------------

def _read_items(dataset_dir: str) -> list[str]:
    """items.csv's first column (item_id) as str, in file order (= score column order)."""
    frame = pd.read_csv(os.path.join(dataset_dir, "items.csv"), dtype=str, keep_default_na=False)
    return frame.iloc[:, 0].tolist()


def _read_sequences(dataset_dir: str) -> dict[str, list[str]]:
    frame = pd.read_csv(os.path.join(dataset_dir, INTERACTIONS), dtype=str,
                        keep_default_na=False)
    return time_ordered(frame)


def _canonical(dataset_dir: str, scratch: str) -> str:
    """``dataset_dir`` itself, or a canonical copy in ``scratch`` when it is raw MovieLens."""
    if os.path.isfile(os.path.join(dataset_dir, INTERACTIONS)):
        return dataset_dir
    if os.path.isfile(os.path.join(dataset_dir, "u.data")):
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from datagen.movielens import convert_movielens
        out = os.path.join(scratch, "canonical")
        convert_movielens(dataset_dir, out)
        return out
    raise FileNotFoundError(f"{dataset_dir} has neither {INTERACTIONS} nor u.data")


def run_protocol(dataset_dir: str, protocol: str, fraction: float = 0.1, seed: int = 0,
                 k: int = 10) -> dict:
    """Split ``dataset_dir`` by ``protocol`` in a temp folder and evaluate every baseline.

    Returns :func:`evaluate_baselines`'s dict plus ``protocol``, ``split`` (the split's
    counts) and ``wall_seconds`` (split + evaluation).
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="baselines-") as scratch:
        source = _canonical(dataset_dir, scratch)
        split_dir = os.path.join(scratch, "split")
        holdout = os.path.join(scratch, "holdout.jsonl")
        if protocol == "last_item":
            counts = last_item_holdout(source, split_dir, holdout)
            train = _read_sequences(split_dir)
            queries = []
            for row in read_jsonl(holdout):
                history = train[row["user_id"]]
                queries.append((history, [row["item_id"]], set(history)))
        elif protocol == "cold_users":
            counts = cold_user_split(source, split_dir, holdout, fraction=fraction, seed=seed)
            train = _read_sequences(split_dir)
            queries = [(row["history"], row["next"], set(row["history"]))
                       for row in read_jsonl(holdout)]
        else:
            raise ValueError(f"protocol must be last_item or cold_users, got {protocol!r}")
        items = _read_items(split_dir)
    result = evaluate_baselines(train, items, queries, k=k)
    result.update({"protocol": protocol, "split": counts,
                   "wall_seconds": time.perf_counter() - start})
    return result


def markdown(result: dict) -> str:
    """A small Markdown table of :func:`run_protocol`'s result."""
    k = result["k"]
    lines = [f"**{result['protocol']}**: {result['queries']} queries, {result['train_users']} "
             f"training users, {result['items']} items; seen masked; wall "
             f"{result['wall_seconds']:.1f} s",
             "",
             f"| baseline | recall@{k} | ndcg@{k} | chosen (inner holdout) | seconds |",
             "|---|---:|---:|---|---:|"]
    for name, param in (("popularity", None), ("ease", "l2"), ("transition_last3", "last_n"),
                        ("transition_chosen", "last_n")):
        row = result[name]
        chosen = f"{param}={row[param]}" if param else ""
        lines.append(f"| {name} | {row[f'recall_at_{k}']:.4f} | {row[f'ndcg_at_{k}']:.4f} | "
                     f"{chosen} | {row['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True,
                        help="canonical dataset folder, or a raw MovieLens-100K folder")
    parser.add_argument("--protocol", required=True, choices=("last_item", "cold_users"))
    parser.add_argument("--fraction", type=float, default=0.1, help="cold_users: share of users")
    parser.add_argument("--seed", type=int, default=0, help="cold_users: hash seed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", help="also write the full result here")
    args = parser.parse_args(argv)
    result = run_protocol(args.dataset, args.protocol, args.fraction, args.seed, args.k)
    print(markdown(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
