"""The item-embedding table: ``item_embeddings.parquet`` (item_id str, embedding list<float32>).

Written by the embed stage, read by the index build and publish stages. Reads and
writes go through :mod:`core.storage`, so the folder may be local or gs://.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Sequence

import numpy as np

from core import storage

FILENAME = "item_embeddings.parquet"


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
    import pyarrow.parquet as pq

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
    n, d = matrix.shape
    flat = pa.array(matrix[order].reshape(-1), type=pa.float32())
    # Fixed offsets of D per row: a plain list<float32> column that pandas/BigQuery read natively.
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    table = pa.table({
        "item_id": pa.array([ids[i] for i in order], type=pa.string()),
        "embedding": pa.ListArray.from_arrays(offsets, flat),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = embeddings_path(folder)
    storage.write_bytes(path, buf.getvalue())
    return path


def load_embeddings(folder: str) -> tuple[list[str], np.ndarray]:
    """Read ``item_embeddings.parquet`` from ``folder``.

    Returns:
        (ids, matrix): N item ids and float32 [N, D], in file order (sorted by id).
    Raises:
        FileNotFoundError: no table in ``folder``.
        ValueError: rows of different widths.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(embeddings_path(folder))))
    ids = [str(v) for v in table.column("item_id").to_pylist()]
    col = table.column("embedding").combine_chunks()
    if len(ids) == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    lengths = np.diff(col.offsets.to_numpy())
    if lengths.min() != lengths.max():
        raise ValueError(f"{embeddings_path(folder)}: embedding widths differ ({lengths.min()}..{lengths.max()})")
    matrix = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), int(lengths[0]))
    return ids, matrix
