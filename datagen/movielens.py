"""MovieLens-100K: convert the raw GroupLens files to the canonical dataset folder, and download
the official zip with a checksum check.

The raw files are licensed for research use only and may not be redistributed: this module
reads them from a folder the user names (or downloads them there) and never bundles them.

Raw input (``source_dir``):

- ``u.data``: ``user id \\t item id \\t rating \\t unix timestamp``
- ``u.user``: ``user id | age | gender | occupation | zip code``
- ``u.item`` (latin-1): ``movie id | title | release date | video release date | IMDb URL |``
  one 0/1 flag per genre, in ``u.genre`` order
- ``u.genre``: ``genre name | flag index``

Canonical output (``out_dir``, UTF-8 CSV):

- ``interactions.csv``: ``user_id,item_id,rating,timestamp`` (rating 1-5, unix seconds),
  in ``u.data`` order.
- ``users.csv``: ``user_id,age,gender,occupation,zip_code`` (zip codes stay strings: some are
  Canadian, e.g. ``T8H1N``).
- ``items.csv``: ``item_id,title,release_date,genres,year``; ``release_date`` is ISO
  ``YYYY-MM-DD`` (empty when unknown); ``genres`` joined with ``|``, the ``unknown`` genre
  dropped unless it is the only one (an item with no flag at all also gets ``unknown``);
  ``year`` is the release year as an integer, derived from ``release_date`` (empty when the
  date is unknown, so a schema that declares it numeric fills it like any missing numeric).

A raw line that cannot be parsed raises :class:`MovieLensFormatError` naming the file, the
1-based line number and the field.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from datetime import datetime
from typing import Literal

from core.config import MULTI_VALUE_SEPARATOR

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: sha256 of the official ml-100k.zip (4,924,029 bytes; GroupLens md5 0e33842e24a9c977be4e0107933c0723).
#: Cross-checked against several independent published pins that also agree on u.data's
#: sha256 (06416e59...dca490, as in the raw copy the MovieLens tests read: MOVIELENS_RAW, tests/conftest.py).
ML100K_ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"

RAW_FILES = ("u.data", "u.user", "u.item", "u.genre")
UNKNOWN_GENRE = "unknown"
# GroupLens's own u.item uses this title for its placeholder movie (id 267).
PLACEHOLDER_TITLE = "unknown"
_ITEM_FIXED_FIELDS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")
# The official files write "01-Jan-1995"; some redistributed copies use "01-01-1995".
_DATE_FORMATS = ("%d-%b-%Y", "%d-%m-%Y")


class MovieLensFormatError(ValueError):
    """A raw MovieLens line is malformed; ``file``, ``line`` (1-based) and ``field`` say where."""

    def __init__(self, file: str, line: int, field: str, reason: str):
        self.file, self.line, self.field = file, line, field
        super().__init__(f"{file}, line {line}, field '{field}': {reason}")


class ChecksumMismatchError(ValueError):
    """A downloaded archive's sha256 differs from the expected value."""


def _require(source_dir: str, name: str) -> str:
    """Path of raw file ``name`` in ``source_dir``; FileNotFoundError naming it if absent."""
    path = os.path.join(source_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MovieLens-100K file {name!r} not found at {path} "
            f"(expected {', '.join(RAW_FILES)} in {source_dir})")
    return path


def _lines(path: str, encoding: str):
    """Yield (1-based line number, line without newline) for the non-blank lines of ``path``."""
    with open(path, encoding=encoding, newline="") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if line.strip():
                yield number, line


def _split(path: str, number: int, line: str, sep: str, names: tuple[str, ...],
           at_least: bool = False) -> list[str]:
    """Split one raw line into exactly len(names) fields (or at least, when ``at_least``)."""
    parts = line.split(sep)
    if len(parts) < len(names) or (not at_least and len(parts) != len(names)):
        missing = names[len(parts)] if len(parts) < len(names) else "<extra>"
        raise MovieLensFormatError(
            path, number, missing,
            f"expected {len(names)} {sep!r}-separated fields ({', '.join(names)}), "
            f"got {len(parts)}")
    return parts


def _int(path: str, number: int, field: str, value: str, lo: int | None = None,
         hi: int | None = None) -> int:
    """Parse a decimal integer field, optionally within [lo, hi]."""
    try:
        parsed = int(value)
    except ValueError:
        raise MovieLensFormatError(path, number, field,
                                   f"expected an integer, got {value!r}") from None
    if (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
        raise MovieLensFormatError(path, number, field,
                                   f"{parsed} is outside [{lo}, {hi}]")
    return parsed


def read_genres(path: str) -> list[str]:
    """u.genre -> genre names indexed by flag position (19 names for the official file)."""
    by_index: dict[int, str] = {}
    for number, line in _lines(path, "latin-1"):
        name, index = _split(path, number, line, "|", ("genre", "index"))
        if not name:
            raise MovieLensFormatError(path, number, "genre", "empty genre name")
        by_index[_int(path, number, "index", index, lo=0)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise MovieLensFormatError(path, len(by_index), "index",
                                   f"genre indices must be 0..{len(by_index) - 1} without gaps, "
                                   f"got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def read_users(path: str) -> list[dict]:
    """u.user -> rows ``{user_id: int, age: int, gender: "M"|"F", occupation, zip_code: str}``."""
    users, seen = [], set()
    names = ("user_id", "age", "gender", "occupation", "zip_code")
    for number, line in _lines(path, "latin-1"):
        uid, age, gender, occupation, zip_code = _split(path, number, line, "|", names)
        user_id = _int(path, number, "user_id", uid, lo=1)
        if user_id in seen:
            raise MovieLensFormatError(path, number, "user_id", f"duplicate user id {user_id}")
        seen.add(user_id)
        if gender not in ("M", "F"):
            raise MovieLensFormatError(path, number, "gender", f"expected M or F, got {gender!r}")
        if not occupation:
            raise MovieLensFormatError(path, number, "occupation", "empty occupation")
        users.append({"user_id": user_id, "age": _int(path, number, "age", age, lo=0, hi=150),
                      "gender": gender, "occupation": occupation, "zip_code": zip_code})
    return users


def _iso_date(path: str, number: int, value: str) -> str:
    """Raw release date ("01-Jan-1995" or "01-01-1995") -> "1995-01-01"; "" stays ""."""
    if not value:
        return ""
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(value, fmt).date().isoformat()
        except ValueError:
            continue  # try the next accepted layout; the error below names the field
    raise MovieLensFormatError(path, number, "release_date",
                               f"expected DD-Mon-YYYY or DD-MM-YYYY, got {value!r}")


def _join_genres(flags: list[str], genres: list[str]) -> str:
    """Names of the set flags joined with "|"; "unknown" only when nothing else is set."""
    names = [g for g, f in zip(genres, flags) if f == "1"]
    known = [g for g in names if g != UNKNOWN_GENRE]
    return MULTI_VALUE_SEPARATOR.join(known) if known else UNKNOWN_GENRE


def release_year(iso_date: str) -> str:
    """ISO ``YYYY-MM-DD`` -> ``"YYYY"``; "" (unknown date) stays "" (a missing numeric)."""
    return iso_date[:4] if iso_date else ""


def read_items(path: str, genres: list[str]) -> list[dict]:
    """u.item (latin-1) -> rows ``{item_id: int, title: str, release_date: ISO str, genres: str,
    year: "YYYY" or ""}``."""
    names = _ITEM_FIXED_FIELDS + tuple(f"genre:{g}" for g in genres)
    items, seen = [], set()
    for number, line in _lines(path, "latin-1"):
        parts = _split(path, number, line, "|", names)
        item_id = _int(path, number, "item_id", parts[0], lo=1)
        if item_id in seen:
            raise MovieLensFormatError(path, number, "item_id", f"duplicate item id {item_id}")
        seen.add(item_id)
        flags = parts[len(_ITEM_FIXED_FIELDS):]
        for name, flag in zip(names[len(_ITEM_FIXED_FIELDS):], flags):
            if flag not in ("0", "1"):
                raise MovieLensFormatError(path, number, name, f"expected 0 or 1, got {flag!r}")
        title = parts[1].strip()
        if not title:
            raise MovieLensFormatError(path, number, "title", "empty title")
        release_date = _iso_date(path, number, parts[2])
        items.append({"item_id": item_id, "title": title, "release_date": release_date,
                      "genres": _join_genres(flags, genres), "year": release_year(release_date)})
    return items


def read_ratings(path: str) -> list[tuple[int, int, int, int, int]]:
    """u.data -> (line number, user_id, item_id, rating 1-5, unix seconds) in file order."""
    names = ("user_id", "item_id", "rating", "timestamp")
    rows = []
    for number, line in _lines(path, "latin-1"):
        uid, iid, rating, ts = _split(path, number, line, "\t", names)
        rows.append((number,
                     _int(path, number, "user_id", uid, lo=1),
                     _int(path, number, "item_id", iid, lo=1),
                     _int(path, number, "rating", rating, lo=1, hi=5),
                     _int(path, number, "timestamp", ts, lo=0)))
    return rows


def _write_csv(path: str, header: list[str], rows) -> None:
    """Write rows (sequences in header order) as a UTF-8 CSV with a header line."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def convert_movielens(source_dir: str, out_dir: str,
                      missing_items: Literal["placeholder", "drop", "error"] = "placeholder") -> dict:
    """Convert raw MovieLens-100K in ``source_dir`` to the canonical folder ``out_dir``.

    ``missing_items`` decides what happens to ratings of an item id absent from u.item:
    ``"placeholder"`` adds an item row titled "unknown" with genre "unknown" (exactly what
    GroupLens's own u.item holds for its placeholder movie 267), ``"drop"`` drops those
    ratings, ``"error"`` raises MovieLensFormatError at the first such u.data line. Ratings
    by a user absent from u.user always raise (there is no upstream precedent for those).

    Returns ``{"interactions", "users", "items", "missing_item_ids", "dropped_interactions"}``
    (counts; ``missing_item_ids`` as sorted str ids).
    """
    if missing_items not in ("placeholder", "drop", "error"):
        raise ValueError(f"missing_items must be 'placeholder', 'drop' or 'error', "
                         f"got {missing_items!r}")
    paths = {name: _require(source_dir, name) for name in RAW_FILES}
    genres = read_genres(paths["u.genre"])
    users = read_users(paths["u.user"])
    items = read_items(paths["u.item"], genres)
    ratings = read_ratings(paths["u.data"])

    user_ids = {u["user_id"] for u in users}
    item_ids = {i["item_id"] for i in items}
    missing: set[int] = set()
    kept = []
    for number, uid, iid, rating, ts in ratings:
        if uid not in user_ids:
            raise MovieLensFormatError(paths["u.data"], number, "user_id",
                                       f"user {uid} is not in {paths['u.user']}")
        if iid not in item_ids:
            if missing_items == "error":
                raise MovieLensFormatError(paths["u.data"], number, "item_id",
                                           f"item {iid} is not in {paths['u.item']}")
            missing.add(iid)
            if missing_items == "drop":
                continue
        kept.append((uid, iid, rating, ts))

    if missing and missing_items == "placeholder":
        items = items + [{"item_id": iid, "title": PLACEHOLDER_TITLE, "release_date": "",
                          "genres": UNKNOWN_GENRE, "year": ""} for iid in sorted(missing)]
        items.sort(key=lambda row: row["item_id"])
    if missing:
        log.warning("MovieLens: %d item id(s) rated in u.data are missing from u.item (%s); "
                    "policy=%s", len(missing), sorted(missing)[:10], missing_items)

    os.makedirs(out_dir, exist_ok=True)
    _write_csv(os.path.join(out_dir, "interactions.csv"),
               ["user_id", "item_id", "rating", "timestamp"], kept)
    _write_csv(os.path.join(out_dir, "users.csv"),
               ["user_id", "age", "gender", "occupation", "zip_code"],
               ([u["user_id"], u["age"], u["gender"], u["occupation"], u["zip_code"]]
                for u in users))
    _write_csv(os.path.join(out_dir, "items.csv"),
               ["item_id", "title", "release_date", "genres", "year"],
               ([i["item_id"], i["title"], i["release_date"], i["genres"], i["year"]] for i in items))
    return {
        "interactions": len(kept),
        "users": len(users),
        "items": len(items),
        "missing_item_ids": [str(i) for i in sorted(missing)],
        "dropped_interactions": len(ratings) - len(kept),
    }


def _sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: zipfile.ZipFile, dest_dir: str) -> None:
    """Extract every member, refusing absolute paths and ``..`` components (zip slip)."""
    root = os.path.realpath(dest_dir)
    for member in archive.namelist():
        target = os.path.realpath(os.path.join(root, member))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"refusing to extract {member!r}: it escapes {dest_dir}")
    archive.extractall(root)


def download_movielens(dest_dir: str, url: str = OFFICIAL_URL,
                       sha256: str = ML100K_ZIP_SHA256, timeout_s: float = 60.0) -> str:
    """Download the MovieLens-100K zip from ``url``, verify its sha256, extract into ``dest_dir``.

    The archive is hashed before anything is extracted; on mismatch nothing is extracted,
    the partial download is deleted and :class:`ChecksumMismatchError` is raised. Any URL
    urllib understands works (``file://`` in tests). Returns the extracted folder that holds
    ``u.data`` (``<dest_dir>/ml-100k`` for the official archive).
    """
    os.makedirs(dest_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".ml-100k-", suffix=".zip", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            shutil.copyfileobj(resp, out)
        actual = _sha256_file(tmp_path)
        if actual != sha256.lower():
            raise ChecksumMismatchError(
                f"sha256 mismatch for {url}: expected {sha256}, got {actual}; "
                f"the archive was not extracted")
        with zipfile.ZipFile(tmp_path) as archive:
            data_members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == "u.data"]
            if not data_members:
                raise FileNotFoundError(f"{url} holds no u.data; is it the MovieLens-100K zip?")
            _safe_extract(archive, dest_dir)
    finally:
        # The zip itself is not kept: only the extracted files are needed, and a stale,
        # unverified archive must never be mistaken for a good one later.
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return os.path.join(dest_dir, os.path.dirname(data_members[0]))
