"""The embed stage's tables, read and written through :mod:`core.storage` (local or gs://).

- ``item_embeddings.parquet`` (item_id str, embedding list<float32>): every catalog item;
  read by the index build and publish stages.
- ``query_embeddings.parquet`` (query_key str, split str, purpose str, embedding
  list<float32>): a seeded sample of real queries pushed through the query tower; the index
  stage tunes (``purpose == "tune"``) and reports recall (``purpose == "eval"``) on them.
  Optional: artifacts written before it existed, or a transform output without interaction
  splits, have none, and the index stage then falls back to stand-in queries.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core import storage
from core.contracts import files as names

FILENAME = names.ITEM_EMBEDDINGS_FILE
QUERY_FILENAME = names.QUERY_EMBEDDINGS_FILE
#: ``purpose`` values of query_embeddings.parquet: the tuner's sample and the disjoint sample
#: the index stage reports recall on (so the reported figure is not the one chosen on).
TUNE, EVAL = "tune", "eval"


def embeddings_path(folder: str) -> str:
    return storage.join(folder, FILENAME)


def write_embeddings(folder: str, ids: Sequence[str], matrix: np.ndarray) -> str:
    """Write the table sorted by item_id (so reruns give byte-identical files).

    Args:
        folder: output folder (local or gs://).
        ids: N unique item ids.
        matrix: float32 [N, D], row i is the embedding of ``ids[i]``.
    Returns:
        The path of the parquet file written.
    Raises:
        ValueError: mismatched lengths, duplicate ids or a non-2-D matrix.
    """
    import pyarrow as pa

    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embedding matrix must be 2-D [N, D], got shape {matrix.shape}")
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{len(ids)} item ids but {matrix.shape[0]} embedding rows")
    ids = [str(i) for i in ids]
    dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dupes:
        raise ValueError(f"duplicate item ids in embeddings, e.g. {dupes[:5]}")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    table = pa.table({
        "item_id": pa.array([ids[i] for i in order], type=pa.string()),
        "embedding": _vectors_column(matrix[order]),
    })
    path = embeddings_path(folder)
    _write_table(path, table)
    return path


def _vectors_column(matrix: np.ndarray):
    """float32 [N, D] -> a list<float32> arrow column with fixed offsets of D per row."""
    import pyarrow as pa

    n, d = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    # Fixed offsets of D per row: a plain list<float32> column that pandas/BigQuery read natively.
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def _write_table(path: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue())


def _matrix_column(table, name: str, path: str) -> np.ndarray:
    """A list<float32> column -> float32 [N, D] (N = 0 gives [0, 0])."""
    col = table.column(name).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = np.diff(col.offsets.to_numpy())
    if lengths.min() != lengths.max():
        raise ValueError(f"{path}: embedding widths differ ({lengths.min()}..{lengths.max()})")
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), int(lengths[0]))


def load_embeddings(folder: str) -> tuple[list[str], np.ndarray]:
    """Read ``item_embeddings.parquet`` from ``folder``.

    Returns:
        (ids, matrix): N item ids and float32 [N, D], in file order (sorted by id).
    Raises:
        FileNotFoundError: no table in ``folder``.
        ValueError: rows of different widths.
    """
    import pyarrow.parquet as pq

    path = embeddings_path(folder)
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    ids = [str(v) for v in table.column("item_id").to_pylist()]
    return ids, _matrix_column(table, "embedding", path)


@dataclass
class QueryEmbeddings:
    """The content of ``query_embeddings.parquet``: Q rows, row i = ``keys[i]``."""

    keys: list[str]
    split: list[str]
    purpose: list[str]
    matrix: np.ndarray  # float32 [Q, D], L2-normalised by the query tower

    def rows(self, purpose: str) -> np.ndarray:
        """float32 [Q', D]: the embeddings of the rows with this ``purpose`` (TUNE or EVAL)."""
        return self.matrix[np.asarray([p == purpose for p in self.purpose], dtype=bool)]


def query_embeddings_path(folder: str) -> str:
    return storage.join(folder, QUERY_FILENAME)


def write_query_embeddings(folder: str, keys: Sequence[str], split: Sequence[str], purpose: Sequence[str],
                           matrix: np.ndarray) -> str:
    """Write ``query_embeddings.parquet`` in the given row order (the sampler fixes it by seed).

    Args:
        keys, split, purpose: Q query keys, the split each was read from, TUNE or EVAL.
        matrix: float32 [Q, D] query-tower embeddings, row i for ``keys[i]``.
    Returns:
        The path written.
    Raises:
        ValueError: lengths differ, a purpose is unknown, or the matrix is not 2-D.
    """
    import pyarrow as pa

    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"query embedding matrix must be 2-D [Q, D], got shape {matrix.shape}")
    if not (len(keys) == len(split) == len(purpose) == matrix.shape[0]):
        raise ValueError(f"{len(keys)} keys, {len(split)} splits, {len(purpose)} purposes but "
                         f"{matrix.shape[0]} embedding rows")
    unknown = sorted(set(purpose) - {TUNE, EVAL})
    if unknown:
        raise ValueError(f"query embedding purpose must be {TUNE!r} or {EVAL!r}, got {unknown}")
    table = pa.table({
        "query_key": pa.array([str(k) for k in keys], type=pa.string()),
        "split": pa.array([str(s) for s in split], type=pa.string()),
        "purpose": pa.array([str(p) for p in purpose], type=pa.string()),
        "embedding": _vectors_column(matrix),
    })
    path = query_embeddings_path(folder)
    _write_table(path, table)
    return path


def load_query_embeddings(folder: str) -> Optional[QueryEmbeddings]:
    """Read ``query_embeddings.parquet`` from ``folder``; None when the folder has none."""
    import pyarrow.parquet as pq

    path = query_embeddings_path(folder)
    if not storage.exists(path):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    return QueryEmbeddings(keys=[str(v) for v in table.column("query_key").to_pylist()],
                           split=[str(v) for v in table.column("split").to_pylist()],
                           purpose=[str(v) for v in table.column("purpose").to_pylist()],
                           matrix=_matrix_column(table, "embedding", path))
