"""Read the transform's catalog TFRecords (``items-*.tfrecord``) without TensorFlow's I/O.

Reading goes through :mod:`core.storage` so local folders and gs:// prefixes share one
path; the TFRecord framing is simple enough to parse here (length, length-CRC, payload,
payload-CRC). CRCs are not re-checked: the files were written by this run's transform,
and a truncated or mis-framed file is still detected and reported.
"""

from __future__ import annotations

import fnmatch
import struct
from typing import Iterator

from core import storage
from core.config import Config
from core.records import decode_example, item_specs

ITEMS_PATTERN = "items-*.tfrecord"


def iter_records(data: bytes, label: str) -> Iterator[bytes]:
    """Payloads of one TFRecord file's bytes.

    Raises:
        ValueError: the file is truncated (names ``label`` and the byte offset).
    """
    pos, n = 0, len(data)
    while pos < n:
        if pos + 12 > n:
            raise ValueError(f"{label}: truncated TFRecord header at byte {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        start = pos + 12
        end = start + length
        if end + 4 > n:
            raise ValueError(f"{label}: truncated TFRecord payload at byte {pos} (length {length})")
        yield data[start:end]
        pos = end + 4


def catalog_files(transformed_dir: str) -> list[str]:
    """The catalog shard paths directly inside ``transformed_dir``, sorted."""
    names = [n for n in storage.list_children(transformed_dir) if fnmatch.fnmatch(n, ITEMS_PATTERN)]
    if not names:
        raise FileNotFoundError(f"{transformed_dir}: no {ITEMS_PATTERN} files")
    return [storage.join(transformed_dir, n) for n in sorted(names)]


def read_catalog(config: Config, transformed_dir: str) -> list[dict]:
    """Every catalog row ({"item_id", item features...}) from ``transformed_dir``, in file order."""
    specs = item_specs(config.schema)
    rows = []
    for path in catalog_files(transformed_dir):
        rows.extend(decode_example(rec, specs) for rec in iter_records(storage.read_bytes(path), path))
    return rows
