"""Keyed vector tables: parquet files of (id str, embedding list<float32>) rows, sorted by id,
read and written through :mod:`core.storage` (local or gs://).

The embed stage writes them (item_embeddings.parquet, query_vectors.parquet: indexer/embeddings.py)
and the query service reads a version's query vectors back: one format, one reader.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Sequence

import numpy as np

from core import storage


def write_sorted(path: str, key_column: str, ids: Sequence[str], matrix: np.ndarray) -> str:
    """Write the table sorted by id (so reruns give byte-identical files).

    Args:
        path: the parquet file (local or gs://).
        key_column: the id column's name.
        ids: N unique ids.
        matrix: float32 [N, D], row i is the embedding of ``ids[i]``.
    Returns:
        ``path``.
    Raises:
        ValueError: mismatched lengths, duplicate ids or a non-2-D matrix.
    """
    import pyarrow as pa

    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embedding matrix must be 2-D [N, D], got shape {matrix.shape}")
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{len(ids)} ids but {matrix.shape[0]} embedding rows")
    ids = [str(i) for i in ids]
    dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dupes:
        raise ValueError(f"duplicate ids ({key_column}) in {path}, e.g. {dupes[:5]}")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    table = pa.table({
        key_column: pa.array([ids[i] for i in order], type=pa.string()),
        "embedding": vectors_column(matrix[order]),
    })
    write_table(path, table)
    return path


def read_keyed(path: str, key_column: str) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [N, D]) of a table :func:`write_sorted` wrote, in file order (sorted by id).

    Raises:
        FileNotFoundError: no such file.
        ValueError: rows of different widths.
    """
    table = read_table(path)
    return [str(v) for v in table.column(key_column).to_pylist()], matrix_column(table, "embedding", path)


def vectors_column(matrix: np.ndarray):
    """float32 [N, D] -> a list<float32> arrow column with fixed offsets of D per row."""
    import pyarrow as pa

    n, d = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    # Fixed offsets of D per row: a plain list<float32> column that pandas/BigQuery read natively.
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def matrix_column(table, name: str, path: str) -> np.ndarray:
    """A list<float32> column -> float32 [N, D] (N = 0 gives [0, 0])."""
    col = table.column(name).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = np.diff(col.offsets.to_numpy())
    if lengths.min() != lengths.max():
        raise ValueError(f"{path}: embedding widths differ ({lengths.min()}..{lengths.max()})")
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), int(lengths[0]))


def write_table(path: str, table) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue())


def read_table(path: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(path)))
