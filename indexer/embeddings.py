"""The embed stage's tables, read and written through :mod:`core.storage` (local or gs://).

- ``item_embeddings.parquet`` (item_id str, embedding list<float32>): every catalog item;
  read by the index build and publish stages.
- ``query_embeddings.parquet`` (query_key str, split str, purpose str, embedding
  list<float32>): a seeded sample of real queries pushed through the query tower; the index
  stage tunes (``purpose == "tune"``) and reports recall (``purpose == "eval"``) on them.
  Optional: artifacts written before it existed, or a transform output without interaction
  splits, have none, and the index stage then falls back to stand-in queries.
- ``query_vectors.parquet`` (key str, embedding list<float32>): with ``index.query_vectors``,
  every query-table key's vector, published with the version and served by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core import storage, vector_table
from core.contracts import files as names

FILENAME = names.ITEM_EMBEDDINGS_FILE
QUERY_FILENAME = names.QUERY_EMBEDDINGS_FILE
#: query_vectors.parquet's id column.
KEY_COLUMN = names.QUERY_VECTORS_KEY_COLUMN
#: ``purpose`` values of query_embeddings.parquet: the tuner's sample and the disjoint sample
#: the index stage reports recall on (so the reported figure is not the one chosen on).
TUNE, EVAL = "tune", "eval"


def write_embeddings(folder: str, ids: Sequence[str], matrix: np.ndarray, filename: str = FILENAME,
                     key_column: str = "item_id") -> str:
    """Write ``folder/filename`` sorted by id (:func:`core.vector_table.write_sorted`).

    Args:
        ids: N unique ids (item ids; query keys for ``query_vectors.parquet``).
        matrix: float32 [N, D], row i is the embedding of ``ids[i]``.
        filename / key_column: the file and its id column (the catalog's by default).
    Returns:
        The path of the parquet file written.
    """
    return vector_table.write_sorted(storage.join(folder, filename), key_column, ids, matrix)


def load_embeddings(folder: str, filename: str = FILENAME, key_column: str = "item_id"
                    ) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [N, D]) of ``folder/filename`` (``item_embeddings.parquet`` by default), sorted by id.

    Raises:
        FileNotFoundError: no table in ``folder``.
        ValueError: rows of different widths.
    """
    return vector_table.read_keyed(storage.join(folder, filename), key_column)


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
        "embedding": vector_table.vectors_column(matrix),
    })
    path = query_embeddings_path(folder)
    vector_table.write_table(path, table)
    return path


def load_query_embeddings(folder: str) -> Optional[QueryEmbeddings]:
    """Read ``query_embeddings.parquet`` from ``folder``; None when the folder has none."""
    path = query_embeddings_path(folder)
    if not storage.exists(path):
        return None
    table = vector_table.read_table(path)
    return QueryEmbeddings(keys=[str(v) for v in table.column("query_key").to_pylist()],
                           split=[str(v) for v in table.column("split").to_pylist()],
                           purpose=[str(v) for v in table.column("purpose").to_pylist()],
                           matrix=vector_table.matrix_column(table, "embedding", path))
