"""Ingest: read the canonical dataset folder, validate it against the config schema,
route malformed rows to a dead-letter file and snapshot the clean tables as parquet.

Input (``config.data.path``, a local folder or a gs:// prefix; gs:// is downloaded to a
temporary folder first so both take one code path):

- ``interactions.{csv,parquet,jsonl}``: ``<query_key>``, ``item_id``, optional ``label``,
  ``rating``, ``timestamp``; with graded actions also ``schema.weight_column`` or
  ``schema.action_column`` (then required);
- ``items.*``: ``item_id`` + every item feature;
- ``users.*`` (optional): ``user_id`` + the user features.

Output (``out_dir``, see docs/ARCHITECTURE.md "ingest"): ``interactions.parquet``,
``items.parquet``, ``users.parquet`` (only when users.* exists), ``dead_letter.jsonl`` and
``ingest_stats.json``.

Validation is vectorised with pandas: each check yields a boolean mask over the rows, and
only the (few) rejected rows are touched one by one to write their dead letters.

Memory: ``items.*`` and ``users.*`` are read whole (they are keyed: duplicates are found over
the whole table). ``interactions.*`` is streamed in chunks of :data:`INGEST_CHUNK_ROWS` records
(parquet: ``ParquetFile.iter_batches``; csv/jsonl: their line readers, cut every N data rows,
good or bad), so peak memory is O(chunk + items), not O(file). Each chunk is validated by the
same code a whole file is, its clean rows appended to ``interactions.parquet`` as one row group
(``ParquetWriter``; the first written chunk fixes the schema, later ones are cast to it) and
its dead letters appended in row order; row numbers stay 1-based rows of the whole file.
What is decided per file stays per file: duplicate column names and missing required columns
(from the header / parquet schema; for jsonl the union of the keys of all kept rows, as a
whole-file read has: a key first seen after a chunk was validated makes the file be read once
more just for its keys, then validated again with every column known from the start), an
empty file and a file without a valid row (after the last chunk). The timestamp-unit refusal below
is decided on the first chunk holding a whole-number timestamp (up to INGEST_CHUNK_ROWS rows,
a bounded sample of the file). One thing is per chunk: pandas infers a column's dtype from the
values it reads, so where a whole-file read would have mixed kinds (a float id column with one
fractional value, a jsonl column of numbers and strings, a parquet bool column with nulls), a
chunk without the odd values reads its cells as if the column were uniform (``7.0`` -> "7").

What is refused, and how (every error is an :class:`IngestError` naming the file as the user
knows it, and the row/line/column when known; a fault confined to one row is a dead letter):

- csv/jsonl are UTF-8 text (a UTF-8 byte-order mark is allowed). A line with bytes that are not
  UTF-8, or with a NUL, makes its row a dead letter naming the line and byte offset (a jsonl
  ``\\u0000`` or lone-surrogate ``\\ud800`` escape likewise, naming the field); in the header,
  or a UTF-16/32 byte-order mark, it is an error.
- A physical line over :data:`MAX_LINE_CHARS` bytes is skipped unread and dead-lettered; a csv
  field or jsonl string over :data:`MAX_FIELD_CHARS` characters dead-letters its row.
- csv is parsed with strict quoting. Junk after a closing quote, or a quote left open at the
  end of the file, on the row's own line dead-letters that row. A quoted field that runs over
  line breaks and then breaks (bad quoting, the end of the file, over MAX_FIELD_CHARS), ends in
  a record of the wrong width, or holds a whole line that parses as a row of the file's width
  is taken for an unclosed quote that swallowed the rows after it: the file is refused, naming
  the row and the line the quote opened on. (A legitimate multi-line field passes unless one
  of its inner lines has exactly as many fields as the header: in a one-column file, a field
  over three or more lines is refused.)
- Duplicate column names (compared after trimming spaces; unnamed ones may repeat), and a
  folder / broken link / special file in place of an input file: errors. jsonl/parquet cells
  that are objects/lists, or bytes that are not UTF-8: dead letters.
- ``timestamp`` is integer unix seconds in [0, :data:`MAX_TIMESTAMP`) (2200-01-01); other
  values are dead letters saying why (checked in float64 first, so nothing overflows int64).
  A file whose median timestamp is past that bound is in another unit (ms/us/ns) and is
  refused whole rather than rescaled (truncating to seconds would quietly lose the sub-second
  order the leave-last-out split uses): convert it to seconds upstream.
- Graded actions (``schema.weight_column`` / ``schema.action_weights``): the column is
  required (an error naming the file and column); a missing, non-numeric, infinite or negative
  weight, or an action the map lacks, is a dead letter naming the column.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa  # pandas' parquet engine, a dependency already
import pyarrow.compute as pc

from core import cleaning, history, storage
from core.config import USER_KEY, Config, FeatureSpec
from core.contracts import files as contract
from core.records import ITEM_KEY, WEIGHT_KEY

#: Table names of the canonical dataset folder, in the order they are validated
#: (items before interactions, because interactions must reference known items).
TABLES = contract.TABLES
FORMATS = ("csv", "parquet", "jsonl")
LABEL, RATING, TIMESTAMP = "label", "rating", "timestamp"
DEAD_LETTER_FILE = contract.DEAD_LETTER_FILE  # the output's names are core.contracts'
STATS_FILE = contract.INGEST_STATS_FILE
#: Records (data rows, good and bad) per chunk of the streamed interactions table: bounds what
#: one chunk holds at once (its raw cells, the validated frame and its arrow copy).
INGEST_CHUNK_ROWS = 1_000_000
#: How many dead-letter reasons a threshold error quotes.
_REASONS_IN_ERROR = 5
#: Longest physical line of a csv/jsonl file, in bytes; a longer one is skipped without being
#: held in memory, and its row dead-lettered.
MAX_LINE_CHARS = 1 << 24
#: Longest csv field / jsonl string value, in characters (8x csv's default of 131,072: room
#: for long descriptions, while a runaway quote still stops early).
MAX_FIELD_CHARS = 1 << 20
#: ``timestamp`` is unix seconds in [0, MAX_TIMESTAMP): 2200-01-01T00:00:00Z. Far below 2**53,
#: so every accepted value is exact in float64 and fits int64.
MAX_TIMESTAMP = 7_258_118_400
#: Units a file's timestamps may be in by mistake (name, units per second), coarsest first.
_FINER_UNITS = (("milliseconds", 10**3), ("microseconds", 10**6), ("nanoseconds", 10**9))
#: Characters no text cell may hold: NUL, and surrogates (lone ones from a jsonl \ud800 escape,
#: or U+DC80..U+DCFF standing for an undecodable byte). Neither can be written as UTF-8 text.
_BAD_CHARS = re.compile(r"[\x00\ud800-\udfff]")
#: jsonl escapes that can produce a _BAD_CHARS character (cheap substring pre-check per line).
_BAD_ESCAPES = ("\\u0000", "\\ud", "\\uD")
#: How many characters of an over-long value a dead letter quotes.
_CLIP = 200
#: A line break as csv reads one inside a quoted field (newline="" keeps all three kinds).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class IngestError(ValueError):
    """The input cannot be ingested; the message names the file (and row/field when known)."""


class _LateColumns(Exception):
    """A jsonl chunk brought keys no earlier chunk had: the earlier chunks were validated
    without those columns, so the file is validated again with all of them (internal)."""


@dataclass
class _Table:
    """One validated table: clean rows, dead letters and counts.

    A table read whole holds its clean rows in ``frame`` and every dead letter in ``dead``; a
    streamed one (interactions) has them in local files instead (``parquet``, ``dead_file``)
    and keeps only the first :data:`_REASONS_IN_ERROR` dead letters in ``dead``.
    """

    name: str
    path: str  # as the user knows it (local path or gs:// URL)
    rows: int  # data rows read (bad included)
    ok: int  # clean rows
    bad: int  # dead letters
    dead: list[dict] = field(default_factory=list)  # in row order
    frame: Optional[pd.DataFrame] = None  # clean rows (read whole)
    parquet: Optional[str] = None  # local parquet of the clean rows (streamed)
    dead_file: Optional[str] = None  # local jsonl of all dead letters, one per line (streamed)


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
        tables = _validate_all(config, files, local_in, config.data.path, work_dir=tmp)
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
            _require_file(found[table], storage.join(shown_root, matches[0]))
        elif table != "users":
            raise IngestError(f"{storage.join(shown_root, table + '.*')}: not found "
                              f"(expected {table}.{'|'.join(formats)} in {shown_root})")
    return found


def _require_file(path: str, shown: str) -> None:
    """Refuse a folder, a broken link or a special file (a FIFO would block) named like a table."""
    if os.path.isdir(path):
        raise IngestError(f"{shown}: is a directory, expected a file")
    if os.path.islink(path) and not os.path.exists(path):
        raise IngestError(f"{shown}: is a broken symbolic link (to {os.readlink(path)})")
    if not os.path.isfile(path):
        raise IngestError(f"{shown}: is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise IngestError(f"{shown}: cannot be read: {exc.strerror or exc}") from exc


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
    """Read one whole file without type coercion (one chunk of :func:`_read_chunks`).

    Returns:
        (frame, row_numbers, dead): ``frame`` has one row per structurally valid record
        (csv cells are str; parquet/jsonl keep their native JSON/arrow scalar types);
        ``row_numbers[i]`` is the 1-based data row of frame row i; ``dead`` are dead letters
        for records that could not be read as a row (wrong field count, invalid JSON, bad
        bytes, an over-long line or field, an object/list cell; see the module docstring).

    Raises:
        IngestError: the file is empty, unreadable, has duplicate column names, no valid
            row, or a structural fault (bad header, unclosed csv quote).
    """
    ((frame, rows, dead),) = _read_chunks(path, shown, chunk_rows=None)
    if len(frame) + len(dead) == 0:
        raise IngestError(f"{shown}: empty input file (no data rows)")
    if len(frame) == 0:
        raise IngestError(_no_valid_rows(shown, len(dead), sorted(dead, key=lambda d: d["row"])))
    return frame, rows, dead


def _read_chunks(path: str, shown: str, chunk_rows: Optional[int],
                 columns: Optional[list[str]] = None) -> Iterator[tuple[pd.DataFrame, list[int], list[dict]]]:
    """Read one file in chunks of ``chunk_rows`` records (None: the whole file as one chunk).

    Yields:
        ``(frame, row_numbers, dead)`` per chunk, as :func:`read_raw` returns for a whole
        file: row numbers are 1-based data rows of the whole file, and the records of one
        chunk follow those of the one before. At least one chunk is yielded (it may be empty);
        the file-level "no data rows" / "no valid rows" checks are the caller's.

    Args:
        columns: jsonl only: every (raw) key of the file's kept rows, in first-seen order,
            when known; None: learnt as the chunks come, and a key that turns up after a chunk
            with rows raises :class:`_LateColumns`.

    Raises:
        IngestError: the file is empty (0 bytes), unreadable, has duplicate column names or a
            structural fault (bad header, unclosed csv quote).
    """
    ext = path.rsplit(".", 1)[-1]
    try:
        if os.path.getsize(path) == 0:
            raise IngestError(f"{shown}: empty input file")
        if ext == "csv":
            chunks = _read_csv(path, shown, chunk_rows)
        elif ext == "jsonl":
            chunks = _read_jsonl(path, shown, chunk_rows, columns)
        else:
            chunks = _read_parquet(path, shown, chunk_rows)
        for frame, rows, dead in chunks:
            frame.columns = [str(c).strip() for c in frame.columns]
            # Every chunk has the file's columns (csv header, parquet schema, jsonl keys so far).
            _refuse_duplicate_columns(list(frame.columns), shown)
            if ext != "csv":  # csv cells are str by construction; their bad bytes were found per line
                # jsonl NULs were found per line (a NUL byte or a \u0000 escape); parquet's are scanned.
                frame, rows, dead = _check_cells(frame, rows, dead, shown, scan_nul=ext == "parquet")
            yield frame.reset_index(drop=True), rows, dead
    except OSError as exc:
        raise IngestError(f"{shown}: cannot be read: {exc.strerror or exc}") from exc


def _refuse_duplicate_columns(columns: list[str], shown: str) -> None:
    """Two columns of one name would make every lookup of it ambiguous (IngestError).

    Unnamed columns may repeat: trailing commas in a csv header make them, and no schema
    column can be unnamed.
    """
    dups = sorted(name for name, count in collections.Counter(columns).items() if count > 1 and name)
    if dups:
        raise IngestError(f"{shown}: duplicate column name(s) {dups} (compared after trimming "
                          "spaces); every column name must be unique")


class _Lines:
    """The physical lines of a csv/jsonl file as UTF-8 text, recording what is wrong with them.

    The file is read as latin-1 (one character per byte, so positions are byte offsets) and
    each line is decoded as UTF-8 on its own: a bad byte names its line and offset, and the
    lines around it still parse. Iterate once.

    Attributes:
        flaws: ``[(line number, reason)]`` in line order, for lines with bytes that are not
            UTF-8 (kept as U+DC80..U+DCFF surrogates so the structure survives), a NUL, or
            over :data:`MAX_LINE_CHARS` bytes (yielded as an empty line). Empty for a clean file.
        text: the last line yielded.
    """

    def __init__(self, path: str, shown: str, newline: str):
        self.path, self.shown, self.newline = path, shown, newline
        self.flaws: list[tuple[int, str]] = []
        self.text = ""
        self.bom = 0  # bytes of a UTF-8 byte-order mark before line 1

    def __iter__(self) -> Iterator[str]:
        with open(self.path, encoding="latin-1", newline=self.newline) as fh:
            line = self._first_line(fh)
            number, offset = 0, self.bom
            while line:  # the per-line work of every csv/jsonl row: keep it to a few C calls
                number += 1
                size = len(line)
                if size == MAX_LINE_CHARS and line[-1] not in "\r\n":
                    size += _skip_line(fh)
                    self.flaws.append((number, f"line {number} is {size} bytes long, over the "
                                               f"{MAX_LINE_CHARS}-byte limit (not read)"))
                    text = "\n"
                else:
                    raw = line.encode("latin-1")
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self.flaws.append((number, f"line {number} is not valid UTF-8 (byte 0x"
                                                   f"{raw[exc.start]:02x} at byte offset {offset + exc.start})"))
                        text = raw.decode("utf-8", "surrogateescape")
                    if "\x00" in text:
                        self.flaws.append((number, f"line {number} holds a NUL byte (at byte offset "
                                                   f"{offset + raw.index(0)})"))
                offset += size
                self.text = text
                yield text
                line = fh.readline(MAX_LINE_CHARS)

    def _first_line(self, fh) -> str:
        """Line 1 without a UTF-8 byte-order mark (still up to MAX_LINE_CHARS long); a UTF-16/32
        byte-order mark is an IngestError."""
        line = fh.readline(MAX_LINE_CHARS)
        if line.startswith(("\xff\xfe", "\xfe\xff")):
            raise IngestError(f"{self.shown}: starts with a UTF-16/UTF-32 byte-order mark; "
                              "ingest reads UTF-8 text: save the file as UTF-8")
        if not line.startswith("\xef\xbb\xbf"):
            return line
        self.bom = 3
        cut = len(line) == MAX_LINE_CHARS and line[-1] not in "\r\n"
        return line[3:] + (fh.readline(3) if cut else "")

    def reasons(self, first: int) -> str:
        """The flaws of lines ``first`` and after (the current record's), joined."""
        mine = [reason for number, reason in reversed(self.flaws) if number >= first]
        return "; ".join(reversed(mine))


def _skip_line(fh) -> int:
    """Read past the rest of an over-long line in bounded chunks; returns the chars skipped."""
    skipped = 0
    while chunk := fh.readline(MAX_LINE_CHARS):
        skipped += len(chunk)
        if chunk[-1] in "\r\n":
            break
    return skipped


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """csv's field size limit is process-wide: set it while ingest parses, then put it back."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: str, shown: str,
              chunk_rows: Optional[int]) -> Iterator[tuple[pd.DataFrame, list[int], list[dict]]]:
    """csv -> chunks of ``chunk_rows`` data rows (None: one chunk) of str cells (see read_raw)."""
    lines = _Lines(path, shown, newline="")
    # strict: junk after a closing quote and a quote still open at the end of the file raise,
    # so an unclosed quote shows instead of silently reading the rows after it into one field.
    reader = csv.reader(lines, strict=True)
    flaws = lines.flaws
    header: Optional[list[str]] = None
    keep, rows, dead = [], [], []
    n = 0  # data rows so far (blank lines are not rows)
    cut = 0  # data rows in the chunks yielded so far
    with _csv_field_limit(MAX_FIELD_CHARS):
        while True:
            if chunk_rows and n - cut >= chunk_rows:
                yield pd.DataFrame(keep, columns=header, dtype=object), rows, dead
                keep, rows, dead, cut = [], [], [], n
                del flaws[:]  # all of lines before the next record: no later record asks for them
            first = reader.line_num + 1
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if header is None:
                    raise IngestError(f"{shown}: line {first}: cannot read the header: {exc}") from exc
                n += 1
                dead.append(_broken_csv_record(shown, n, first, reader.line_num, exc, lines.text, header))
                continue
            last = reader.line_num
            if flaws and flaws[-1][0] >= first:
                if header is None:
                    raise IngestError(f"{shown}: header: {lines.reasons(first)}; ingest reads UTF-8 text "
                                      "(NULs in a header usually mean UTF-16)")
                n += 1
                dead.append(_flawed_record(shown, n, rec, header, lines.reasons(first)))
                continue
            if not rec:
                continue
            if header is None:
                if last > first:
                    raise IngestError(f"{shown}: the header spans lines {first}-{last}: an unclosed quote?")
                header = rec
                continue
            n += 1
            if last > first:
                _check_multiline_record(shown, n, first, last, rec, len(header))
            if len(rec) != len(header):
                dead.append(_dead(shown, n, "*", f"expected {len(header)} fields, got {len(rec)}",
                                  {"fields": rec}))
                continue
            keep.append(rec)
            rows.append(n)
    if header is None:
        raise IngestError(f"{shown}: empty input file")
    if n > cut or cut == 0:
        yield pd.DataFrame(keep, columns=header, dtype=object), rows, dead


def _broken_csv_record(shown: str, n: int, first: int, last: int, exc: csv.Error, line: str,
                       header: list[str]) -> dict:
    """A record csv could not parse -> its dead letter; IngestError when it spanned lines.

    A record that breaks on its own line (junk after a quote, a quote open at the end of the
    file, a field over MAX_FIELD_CHARS) is that row's fault. One whose quoted field first ran
    over line breaks means the quote that opened on line ``first`` was never closed: the rows
    after it were read as its text, and nothing after that line can be trusted.
    """
    if last > first:
        raise IngestError(f"{shown}: row {n} (line {first}): the quoted field opened on line {first} "
                          f"is still open on line {last} ({exc}): an unclosed quote? It would "
                          "swallow the rows after it")
    with _csv_field_limit(MAX_LINE_CHARS):  # the line is bounded: reparse it to name the field
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error:
            fields = []
    long = [i for i, value in enumerate(fields) if len(value) > MAX_FIELD_CHARS]
    if not long:  # a quoting fault (it fails again with the larger limit)
        return _dead(shown, n, "*", f"line {first} is not valid CSV ({exc}): a quote left open, or text "
                     "after a closing quote", {"line": _printable(_clip(line))})
    name = header[long[0]] if long[0] < len(header) else "*"
    clipped = [_clip(v) for v in fields]
    raw = dict(zip(header, clipped)) if len(fields) == len(header) else {"fields": clipped}
    return _dead(shown, n, name, f"field of {len(fields[long[0]])} characters, over the "
                 f"{MAX_FIELD_CHARS}-character limit (line {first})", raw)


def _flawed_record(shown: str, n: int, rec: list[str], header: list[str], reasons: str) -> dict:
    """A record on a line with bad bytes / a NUL / too many bytes -> its dead letter.

    ``field`` is the first column holding a bad character ("*" when none is, e.g. a skipped line).
    """
    named = len(rec) == len(header)
    bad = [i for i, value in enumerate(rec) if _BAD_CHARS.search(value)]
    name = header[bad[0]] if bad and named else "*"
    values = [_printable(v) for v in rec]
    return _dead(shown, n, name, reasons, dict(zip(header, values)) if named else {"fields": values})


def _check_multiline_record(shown: str, n: int, first: int, last: int, rec: list[str], width: int) -> None:
    """Refuse a record whose quoted field spans lines if it looks like an unclosed quote.

    Evidence: the record has the wrong number of fields, or a whole line inside one of its
    fields parses as a row of the file's width (the rows an unclosed quote swallowed). A
    multi-line text field passes otherwise.
    """
    if len(rec) != width:
        raise IngestError(f"{shown}: row {n} (line {first}): the quoted field opened on line {first} "
                          f"spans lines {first}-{last} and the record has {len(rec)} fields, the header "
                          f"{width}: an unclosed quote?")
    line = first
    for value in rec:
        parts = _LINE_BREAK.split(value)
        for k, inner in enumerate(parts[1:-1], start=1):  # whole lines, both ends inside the field
            if len(next(csv.reader([inner]), [])) == width:
                raise IngestError(
                    f"{shown}: row {n} (line {first}): the quoted field opened on line {first} runs to "
                    f"line {last}, and line {line + k} inside it reads as a row of its own "
                    f"({_clip(inner)!r}): an unclosed quote? Close or double it (\"\") and re-run")
        line += len(parts) - 1


def _read_jsonl(path: str, shown: str, chunk_rows: Optional[int],
                columns: Optional[list[str]] = None) -> Iterator[tuple[pd.DataFrame, list[int], list[dict]]]:
    """jsonl -> chunks of ``chunk_rows`` records (None: one chunk), each framed with every key
    seen so far (``columns`` first when given; see :func:`_read_chunks`)."""
    lines = _Lines(path, shown, newline="\n")  # JSON Lines end at "\n" only
    flaws = lines.flaws
    keep, rows, dead = [], [], []
    seen = dict.fromkeys(columns or ())  # raw keys of kept rows, first seen first
    state = {"seen": seen, "learn": columns is None, "framed": False}
    cut = False  # a chunk was yielded
    for n, line in enumerate(lines, start=1):
        if chunk_rows and len(keep) + len(dead) >= chunk_rows:
            yield _jsonl_frame(keep, state), rows, dead
            keep, rows, dead, cut = [], [], [], True
            del flaws[:]  # all of lines before this one: no later record asks for them
        if flaws and flaws[-1][0] == n:
            dead.append(_dead(shown, n, _jsonl_bad_field(line) or "*", lines.reasons(n),
                              {"line": _printable(_clip(line.rstrip("\n")))}))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            dead.append(_dead(shown, n, "*", f"invalid JSON: {exc.msg}", {"line": _clip(line.rstrip("\n"))}))
            continue
        except RecursionError:  # e.g. a line of 100k "[": json recurses per nesting level
            dead.append(_dead(shown, n, "*", "invalid JSON: nested too deeply",
                              {"line": _clip(line.rstrip("\n"))}))
            continue
        if not isinstance(obj, dict):
            dead.append(_dead(shown, n, "*", "not a JSON object", {"line": _clip(line.rstrip("\n"))}))
            continue
        # Only a line with one of these escapes, or a long one, can hold a bad or over-long string.
        if len(line) > MAX_FIELD_CHARS or ("\\u" in line and any(e in line for e in _BAD_ESCAPES)):
            problem = _bad_json_value(obj)
            if problem:
                dead.append(_dead(shown, n, problem[0], problem[1], {k: _clip(v) for k, v in obj.items()}))
                continue
        keep.append(obj)
        rows.append(n)
    if keep or dead or not cut:
        yield _jsonl_frame(keep, state), rows, dead


def _jsonl_frame(keep: list[dict], state: dict) -> pd.DataFrame:
    """The kept objects of one chunk as a frame with every column of the file so far.

    A whole-file read makes a column of every key any kept row has (NaN where a row lacks
    it); a chunk is given the same columns. A key that first turns up after a chunk with rows
    was framed raises :class:`_LateColumns` while the columns are being learnt.
    """
    frame = pd.DataFrame.from_records(keep) if keep else pd.DataFrame()
    seen = state["seen"]
    new = [c for c in frame.columns if c not in seen]
    if new and state["framed"] and state["learn"]:
        raise _LateColumns(new)
    seen.update(dict.fromkeys(new))
    state["framed"] = state["framed"] or bool(keep)
    if list(frame.columns) != list(seen):
        frame = frame.reindex(columns=list(seen))
    return frame


def _jsonl_columns(path: str, shown: str) -> list[str]:
    """Every raw key of a jsonl file's kept rows, first seen first (a read of the whole file)."""
    columns: list[str] = []
    for frame, _, _ in _read_jsonl(path, shown, INGEST_CHUNK_ROWS, columns=[]):
        columns = list(frame.columns)  # each chunk has all the keys so far
    return columns


def _bad_json_value(obj: dict) -> Optional[tuple[str, str]]:
    """(field, reason) for the first key/string value of a JSON object that is not storable
    text (a NUL, a lone surrogate) or is over MAX_FIELD_CHARS characters; None when all are fine."""
    for key, value in obj.items():
        if _BAD_CHARS.search(key):
            return "*", f"key {key!r}: {_bad_char_reason(key)}"
        if isinstance(value, str):
            if _BAD_CHARS.search(value):
                return key, _bad_char_reason(value)
            if len(value) > MAX_FIELD_CHARS:
                return key, f"string of {len(value)} characters, over the {MAX_FIELD_CHARS}-character limit"
    return None


def _jsonl_bad_field(line: str) -> Optional[str]:
    """The field holding a bad character on a flawed jsonl line, when the line parses at all."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    return next((k for k, v in obj.items() if isinstance(v, str) and _BAD_CHARS.search(v)), None)


def _bad_char_reason(text: str) -> str:
    char = _BAD_CHARS.search(text).group()
    if char == "\x00":
        return "holds a NUL character (\\u0000)"
    return f"holds a lone surrogate \\u{ord(char):04x}, which is not text (cannot be written as UTF-8)"


def _read_parquet(path: str, shown: str,
                  chunk_rows: Optional[int]) -> Iterator[tuple[pd.DataFrame, list[int], list[dict]]]:
    """parquet -> chunks of ``chunk_rows`` rows (None: one chunk) converted as pd.read_parquet
    converts a whole file (the pandas metadata's index is restored, then dropped by the caller)."""
    import pyarrow.parquet as pq  # imported when a parquet file is read

    try:
        # Duplicate names make pandas' reader fail with an arrow message that names neither.
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types; re-raise with the file name
        raise IngestError(f"{shown}: not a readable parquet file: {exc}") from exc
    _refuse_duplicate_columns([str(c).strip() for c in names], shown)
    if not chunk_rows:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types; re-raise with the file name
            raise IngestError(f"{shown}: not a readable parquet file: {exc}") from exc
        yield frame, list(range(1, len(frame) + 1)), []
        return
    done = 0  # rows in the chunks yielded so far
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            if batch.num_rows:
                # Through a Table, as pd.read_parquet converts: its pandas metadata applies.
                frame = pa.Table.from_batches([batch]).to_pandas()
                yield frame, list(range(done + 1, done + len(frame) + 1)), []
                done += len(frame)
        if done == 0:  # no rows: one empty chunk with the file's columns
            yield pq.read_schema(path).empty_table().to_pandas(), [], []
    except Exception as exc:  # pyarrow raises several types; re-raise with the file name
        raise IngestError(f"{shown}: not a readable parquet file: {exc}") from exc


#: ``infer_dtype`` kinds whose cells are all plain scalars: nothing to look at cell by cell.
_SCALAR_KINDS = frozenset({"empty", "string", "integer", "floating", "mixed-integer-float", "decimal",
                           "boolean", "integer-na", "complex", "datetime", "datetime64", "date",
                           "time", "timedelta", "timedelta64", "period", "categorical", "interval"})


def _check_cells(frame: pd.DataFrame, rows: list[int], dead: list[dict], shown: str,
                 scan_nul: bool) -> tuple[pd.DataFrame, list[int], list[dict]]:
    """jsonl/parquet cells no column type can take -> dead letters, their rows dropped.

    Those are a JSON object/array (arrow struct/list), bytes that are not UTF-8 (bytes that are
    become str: an arrow binary column), and a NUL in a string (``scan_nul``). A column is
    looked at cell by cell only when ``infer_dtype`` does not vouch for it; the NUL scan is
    vectorised.
    """
    field = np.full(len(frame), None, dtype=object)
    reason = np.full(len(frame), None, dtype=object)
    for col in frame.columns:
        s = frame[col]
        kind = pd.api.types.infer_dtype(s, skipna=True)
        if kind not in _SCALAR_KINDS:  # mixed, bytes, unknown-array: rare, so cell by cell
            checked = [_cell_problem(v) for v in s.to_numpy(dtype=object)]
            frame[col] = pd.Series([v for v, _ in checked], index=frame.index, dtype=object)
            problems = np.array([p for _, p in checked], dtype=object)
        elif kind == "string" and scan_nul:
            nul = np.asarray(s.str.contains("\x00", regex=False, na=False), dtype=bool)
            problems = np.where(nul, _bad_char_reason("\x00"), None)
        else:
            continue
        new = pd.notna(problems) & pd.isna(field)  # the first problem per row wins
        field[new], reason[new] = col, problems[new]
    bad = pd.notna(field)
    if not bad.any():
        return frame, rows, dead
    idx = np.flatnonzero(bad)
    raws = frame.iloc[idx].to_dict("records")
    dead = dead + [_dead(shown, rows[i], field[i], reason[i], raw) for i, raw in zip(idx, raws)]
    keep = ~bad
    return frame.loc[keep].reset_index(drop=True), [r for r, k in zip(rows, keep) if k], dead


def _cell_problem(value) -> tuple[object, Optional[str]]:
    """One cell of a column infer_dtype did not vouch for -> (value, problem or None)."""
    if isinstance(value, dict):
        return value, "an object (JSON object / struct), expected a single value"
    if isinstance(value, (list, tuple, np.ndarray)):
        return value, "a list (JSON array / list column), expected a single value"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return value, f"bytes that are not UTF-8 text (byte 0x{value[exc.start]:02x} at offset {exc.start})"
    if isinstance(value, str) and _BAD_CHARS.search(value):
        return value, _bad_char_reason(value)
    return value, None


def _clip(value):
    """A str over _CLIP characters shortened for a dead letter (other values unchanged)."""
    if isinstance(value, str) and len(value) > _CLIP:
        return f"{value[:_CLIP]}... ({len(value)} characters)"
    return value


def _printable(value: str) -> str:
    """Undecodable bytes (kept as surrogates while parsing) shown as U+FFFD in a dead letter."""
    if not _BAD_CHARS.search(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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


_as_text = cleaning.as_text


def _missing(text: pd.Series) -> np.ndarray:
    """Cells that are missing (None, NaN) or empty after cleaning (core/cleaning.py)."""
    return cleaning.clean_strings(text).isna().to_numpy(dtype=bool)


def _parse_numeric(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values float64 with NaN for missing, missing mask, not-a-finite-number mask), by
    core.cleaning.clean_number's rule (the one the query service applies to a request)."""
    values, bad = cleaning.clean_numbers(column)
    return values, np.isnan(values) & ~bad, bad


def _reasons(mask: np.ndarray, text: pd.Series, template: str) -> np.ndarray:
    """``template.format(cell)`` for the rows in ``mask``, None elsewhere (object [n]).

    Only flagged rows are formatted, so a clean column costs no per-row Python.
    """
    out = np.full(len(mask), None, dtype=object)
    idx = np.flatnonzero(mask)
    if len(idx):
        cells = text.iloc[idx].fillna("").to_numpy(dtype=object)
        out[idx] = [template.format(v) for v in cells]
    return out


def _check_id(chk: _Checker, name: str) -> pd.Series:
    text = cleaning.clean_strings(chk.frame[name])
    chk.flag(text.isna().to_numpy(dtype=bool), name, f"empty {name}")
    if name == ITEM_KEY:
        # A history joins item ids with this character (core/history.py): one inside an id
        # would split it in two.
        chk.flag(text.str.contains(history.SEPARATOR, regex=False).fillna(False).to_numpy(dtype=bool),
                 name, "item_id holds U+001F (the unit separator that joins a history's item ids)")
    return text.fillna("")


def _check_feature(chk: _Checker, spec: FeatureSpec) -> pd.Series:
    """One declared feature column -> clean values (str, or float64 for numerics; an
    embedding's canonical vector string).

    Missing values are not errors: the transform fills them (""/train mean).
    """
    if spec.type == "embedding":
        return _check_embedding(chk, spec)
    text = _as_text(chk.frame[spec.name])
    if spec.type == "numeric":
        values, _, bad = _parse_numeric(chk.frame[spec.name])
        chk.flag(bad, spec.name, _reasons(bad, text, "not a number: {!r}"))
        return pd.Series(values, dtype="float64")
    if spec.type in ("id", "categorical"):
        # Not a key: a missing value is allowed (the transform fills "").
        return cleaning.clean_strings(chk.frame[spec.name]).fillna("")
    return text.fillna("")  # text and multi-categorical: the transform cleans them whole


def _check_embedding(chk: _Checker, spec: FeatureSpec) -> pd.Series:
    """An embedding column -> each row's vector as :func:`core.cleaning.embedding_text` ("" when
    missing: the zero vector); a row with another length or a non-finite value is a dead letter.
    Per-row Python on purpose: a vector cell is a list or a string of ``dims`` numbers."""
    column = chk.frame[spec.name]
    out = np.empty(len(column), dtype=object)
    bad = np.zeros(len(column), dtype=bool)
    reasons = np.full(len(column), None, dtype=object)
    for i, cell in enumerate(column.to_numpy(dtype=object)):
        if not isinstance(cell, (list, tuple, np.ndarray)) and (cleaning.is_missing(cell) or
                                                                 (isinstance(cell, str) and not cell.strip())):
            out[i] = ""
            continue
        try:
            out[i] = cleaning.embedding_text(cleaning.clean_embedding(cell, spec.dims))
        except cleaning.NotAVector as err:
            bad[i], reasons[i], out[i] = True, str(err), ""
    chk.flag(bad, spec.name, reasons)
    return pd.Series(out, dtype=object)


def _require_columns(frame: pd.DataFrame, required: list[str], shown: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise IngestError(f"{shown}: missing required column(s) {missing}; found {list(frame.columns)}")


# --------------------------------------------------------------------------- tables


def _validate_all(config: Config, files: dict[str, str], local_root: str, shown_root: str,
                  work_dir: str) -> dict[str, _Table]:
    """Validate every table; the streamed interactions' outputs are written under ``work_dir``."""
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
    known_items = _text_array(tables["items"].frame[ITEM_KEY])
    tables["interactions"] = _validate_interactions(files["interactions"], shown["interactions"],
                                                    config, known_items, work_dir)
    return tables


def _validate_items(path: str, shown: str, config: Config) -> _Table:
    """items.*: item_id + every item feature (+ display-only columns, carried as strings)."""
    return _validate_keyed_table(path, shown, "items", ITEM_KEY, config.schema.table_item_features,
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
    n_rows = len(rows) + len(dead)
    clean, dead = _finish(chk, out, dead)
    if clean.empty:
        raise IngestError(_no_valid_rows(shown, n_rows, dead))
    return _Table(name=table, path=shown, rows=n_rows, ok=len(clean), bad=len(dead), dead=dead, frame=clean)


def _validate_interactions(path: str, shown: str, config: Config, known_items: "pa.Array",
                           work_dir: str) -> _Table:
    """interactions.*, streamed in chunks of INGEST_CHUNK_ROWS records (see the module docstring).

    Writes ``work_dir``/interactions.parquet (the clean rows, one row group per chunk with
    clean rows) and ``work_dir``/interactions.dead_letter.jsonl (every dead letter, in row order).

    Raises:
        IngestError: as :func:`read_raw` and :func:`_check_interactions` do; the "empty" and
            "no valid rows" errors only after the last chunk.
    """
    columns = None
    while True:
        try:
            return _stream_interactions(path, shown, config, known_items, work_dir, columns)
        except _LateColumns:  # jsonl only: read the keys, then validate again knowing them all
            columns = _jsonl_columns(path, shown)


def _stream_interactions(path: str, shown: str, config: Config, known_items: "pa.Array",
                         work_dir: str, columns: Optional[list[str]]) -> _Table:
    """One pass of :func:`_validate_interactions` over the file (``columns``: see _read_chunks)."""
    import pyarrow.parquet as pq

    schema = config.schema
    extra = [] if schema.query_key == USER_KEY else schema.user_features
    required = [schema.query_key, ITEM_KEY, *[f.name for f in extra]]
    if schema.weighted:  # graded actions: the column each row's weight comes from
        required.append(_weight_source(config))
    parquet_path = os.path.join(work_dir, contract.table_file(contract.INTERACTIONS_TABLE))
    dead_path = os.path.join(work_dir, f"{contract.INTERACTIONS_TABLE}.{DEAD_LETTER_FILE}")
    rows = ok = bad = 0
    first_dead: list[dict] = []  # what the errors quote
    unit = {"decided": False}  # the timestamp-unit check is made on one chunk (the first with any)
    writer = None
    columns_checked = False
    try:
        with open(dead_path, "w", encoding="utf-8", newline="\n") as dead_fh:
            for frame, row_numbers, dead in _read_chunks(path, shown, INGEST_CHUNK_ROWS, columns):
                rows += len(row_numbers) + len(dead)
                if len(frame):
                    if not columns_checked:  # every chunk has the file's columns: check them once
                        _require_columns(frame, required, shown)
                        columns_checked = True
                    clean, dead = _check_interactions(frame, row_numbers, dead, shown, config, known_items, unit)
                else:
                    clean, dead = None, sorted(dead, key=lambda d: d["row"])
                if clean is not None and len(clean):
                    table = pa.Table.from_pandas(clean, preserve_index=False)
                    if writer is None:  # the first chunk with clean rows fixes the file's schema
                        writer = pq.ParquetWriter(parquet_path, table.schema)
                    elif not table.schema.equals(writer.schema):
                        table = table.cast(writer.schema)  # e.g. a column of nulls in this chunk
                    writer.write_table(table)
                    ok += len(clean)
                bad += len(dead)
                dead_fh.write("".join(json.dumps(d, sort_keys=True) + "\n" for d in dead))
                first_dead.extend(dead[:_REASONS_IN_ERROR - len(first_dead)])
    finally:
        if writer is not None:
            writer.close()
    if rows == 0:
        raise IngestError(f"{shown}: empty input file (no data rows)")
    if ok == 0:
        raise IngestError(_no_valid_rows(shown, rows, first_dead))
    return _Table(name="interactions", path=shown, rows=rows, ok=ok, bad=bad, dead=first_dead,
                  parquet=parquet_path, dead_file=dead_path)


def _check_interactions(frame: pd.DataFrame, rows: list[int], dead: list[dict], shown: str, config: Config,
                        known_items: "pa.Array", unit: dict) -> tuple[pd.DataFrame, list[dict]]:
    """One chunk of interactions -> (clean rows, dead letters in row order).

    key + item_id required; label/rating/timestamp typed when present. A weighted schema (graded
    actions) adds the float64 ``weight`` column (:func:`_check_weight`); a row weighing 0 gets
    label 0 (an explicit negative). For non-user keys
    (search queries) the other query features, if any, are interaction columns too (there is
    no users.* to look them up in). ``unit`` is shared by the chunks of one file (see
    :func:`_check_timestamp`).
    """
    schema = config.schema
    key_spec = next(f for f in schema.query_features if f.name == schema.query_key)
    extra = [] if schema.query_key == USER_KEY else schema.user_features
    chk = _Checker(frame, rows, shown)
    key_text = _as_text(frame[schema.query_key])
    if key_spec.type == "numeric":
        raise IngestError(f"{shown}: query_key {schema.query_key!r} cannot be numeric")
    chk.flag(_missing(key_text), schema.query_key, f"empty {schema.query_key}")
    out = {schema.query_key: (cleaning.clean_strings(key_text).fillna("") if key_spec.type in ("id", "categorical")
                              else key_text.fillna(""))}
    item_ids = _check_id(chk, ITEM_KEY)
    out[ITEM_KEY] = item_ids
    out[LABEL] = _check_label(chk, frame)
    if schema.weighted:
        out[WEIGHT_KEY] = _check_weight(chk, config)
        # A row weighing 0 (a view) is an explicit negative; a label-0 row stays one.
        out[LABEL] = pd.Series(np.where(out[WEIGHT_KEY].to_numpy() == 0.0, 0, out[LABEL].to_numpy()),
                               dtype=np.int64)
    if RATING in frame.columns:
        values, _, bad = _parse_numeric(frame[RATING])
        chk.flag(bad, RATING, "rating is not a number")
        out[RATING] = pd.Series(values, dtype="float64")
    if TIMESTAMP in frame.columns:
        out[TIMESTAMP] = _check_timestamp(chk, frame[TIMESTAMP], unit)
    for spec in extra:
        out[spec.name] = _check_feature(chk, spec)
    known = pc.is_in(_text_array(item_ids), value_set=known_items).to_numpy(zero_copy_only=False)
    chk.flag(~known, ITEM_KEY, "unknown item_id")
    return _finish(chk, out, dead)


def _text_array(text: pd.Series) -> "pa.Array":
    """A str Series as one arrow large_string array (a copy only when pandas holds python str).

    Unknown item ids are looked up with ``pyarrow.compute.is_in`` against the items' ids in
    this form: pandas' ``isin`` with a set copies the set into a list on every call, which
    cost seconds per chunk at 1M items.
    """
    arr = pa.array(text.array, type=pa.large_string())
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _weight_source(config: Config) -> str:
    """The interactions column a weighted schema's row weights come from."""
    schema = config.schema
    return schema.weight_column if schema.weight_column is not None else schema.action_column


def _check_weight(chk: _Checker, config: Config) -> pd.Series:
    """Graded actions -> float64 weights >= 0: ``schema.weight_column`` parsed as a number, or
    ``schema.action_weights[action]``. A missing, non-numeric, infinite or negative weight, a
    missing action and an action not in the map are dead letters naming the column (the flagged
    rows' weights are 0 here; they are dropped)."""
    schema = config.schema
    name = _weight_source(config)
    if schema.weight_column is not None:
        text = _as_text(chk.frame[name])
        values, missing, bad = _parse_numeric(chk.frame[name])
        chk.flag(missing, name, f"empty {name} (schema.weight_column)")
        chk.flag(bad, name, _reasons(bad, text, "weight is not a finite number: {!r}"))
        negative = ~missing & ~bad & (values < 0.0)
        chk.flag(negative, name, _reasons(negative, text, "weight is negative: {!r}"))
        return pd.Series(np.where(missing | bad | negative, 0.0, values), dtype="float64")
    text = cleaning.clean_strings(chk.frame[name])
    missing = text.isna().to_numpy(dtype=bool)
    chk.flag(missing, name, f"empty {name} (schema.action_column)")
    weights = schema.action_weights
    unknown = ~missing & ~text.isin(list(weights)).fillna(False).to_numpy(dtype=bool)
    known = repr(sorted(weights)).replace("{", "{{").replace("}", "}}")  # a format template below
    chk.flag(unknown, name, _reasons(unknown, text, "unknown action {!r} (schema.action_weights has " + known + ")"))
    values = pd.to_numeric(text.map(weights), errors="coerce").astype("float64").to_numpy()
    return pd.Series(np.where(missing | unknown, 0.0, values), dtype="float64")


def _check_label(chk: _Checker, frame: pd.DataFrame) -> pd.Series:
    """label column -> int64 0/1 (all 1 when the column is absent: every row is a positive)."""
    if LABEL not in frame.columns:
        return pd.Series(np.ones(len(frame), dtype=np.int64))
    values, missing, bad = _parse_numeric(frame[LABEL])
    ok = np.isin(values, (0.0, 1.0))
    chk.flag(missing | bad | ~ok, LABEL, "label must be 0 or 1")
    # Cast only the 0/1 values: a flagged 1e30 would overflow int64 (with a numpy warning).
    return pd.Series(np.where(ok, values, 0.0).astype(np.int64))


def _check_timestamp(chk: _Checker, column: pd.Series, unit: Optional[dict] = None) -> pd.Series:
    """timestamp column -> int64 unix seconds in [0, MAX_TIMESTAMP).

    Missing, non-numeric, fractional, negative and too-late values are dead letters; the range
    is checked in float64 before the cast, so nothing (1e30, 2**63, 20 digits) wraps around in
    int64. A file most of whose values are too late is in another unit: IngestError, decided
    on the first chunk holding a whole-number timestamp (``unit["decided"]`` is then set, and
    later chunks of the file are not asked again; None: a whole file, decided on it).
    """
    text = _as_text(column)
    values, missing, bad = _parse_numeric(column)
    chk.flag(missing, TIMESTAMP, "missing timestamp")
    fractional = ~missing & ~bad & (np.mod(np.nan_to_num(values), 1) != 0)
    chk.flag(bad | fractional, TIMESTAMP, "timestamp is not an integer")
    whole = ~missing & ~bad & ~fractional
    if unit is None or not unit["decided"]:
        _refuse_other_unit(values[whole], chk.shown)
        if unit is not None:
            unit["decided"] = bool(whole.any())
    negative = whole & (values < 0)
    chk.flag(negative, TIMESTAMP, _reasons(negative, text, "timestamp {} is negative (before 1970); "
                                           "expected unix seconds"))
    late = whole & (values >= MAX_TIMESTAMP)
    chk.flag(late, TIMESTAMP, _reasons(late, text, "timestamp {} is out of range: after 2200-01-01 as unix "
                                       f"seconds (the limit is {MAX_TIMESTAMP - 1})"))
    ok = whole & ~negative & ~late
    return pd.Series(np.where(ok, values, 0.0).astype(np.int64))


def _refuse_other_unit(values: np.ndarray, shown: str) -> None:
    """IngestError when the file's median timestamp (float64 [n]) is past MAX_TIMESTAMP.

    Then most rows are not unix seconds but (very likely) milliseconds, microseconds or
    nanoseconds; dead-lettering them one by one would hide the cause, and rescaling them
    would truncate the order within a second, so the file is refused and the unit named.
    """
    if not len(values):
        return
    median = float(np.median(values))
    if median < MAX_TIMESTAMP:
        return
    for unit, per_second in _FINER_UNITS:
        if median < MAX_TIMESTAMP * per_second:
            day = datetime.datetime.fromtimestamp(median / per_second, tz=datetime.timezone.utc).date()
            raise IngestError(f"{shown}: timestamps look like {unit}, not unix seconds: the median "
                              f"{median:.0f} is after 2200-01-01 as seconds but {day} as {unit}; "
                              f"divide them by {per_second} before ingest")
    raise IngestError(f"{shown}: timestamps are out of range: the median {median:.6g} is after "
                      "2200-01-01 even as nanoseconds; expected unix seconds")


def _flag_duplicates(chk: _Checker, ids: pd.Series, name: str) -> None:
    """Keep the first valid row per id; later valid rows with the same id are dead letters."""
    valid = ~chk.bad
    dup = np.zeros(len(ids), dtype=bool)
    dup[valid] = ids[valid].duplicated(keep="first").to_numpy(dtype=bool)
    chk.flag(dup, name, f"duplicate {name} (first occurrence kept)")


def _finish(chk: _Checker, out: dict[str, pd.Series], dead: list[dict]) -> tuple[pd.DataFrame, list[dict]]:
    """(clean rows of ``out`` with non-numeric columns as str, the reader's ``dead`` letters
    plus the checker's, in row order). The caller decides whether no clean row is an error."""
    dead = sorted(dead + chk.dead_letters(), key=lambda d: d["row"])
    clean = pd.DataFrame({c: s.reset_index(drop=True) for c, s in out.items()})
    clean = clean.loc[~chk.bad].reset_index(drop=True)
    for col in clean.columns:
        if not pd.api.types.is_numeric_dtype(clean[col].dtype):
            clean[col] = clean[col].astype(str)
    return clean, dead


def _no_valid_rows(shown: str, rows: int, dead: list[dict]) -> str:
    reasons = "; ".join(f"row {d['row']} {d['field']}: {d['reason']}" for d in dead[:_REASONS_IN_ERROR])
    return f"{shown}: no valid rows out of {rows} ({reasons})"


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
    """Write the tables' parquet files, dead_letter.jsonl and ingest_stats.json into the local
    ``out_dir``; a streamed table's files (already written) are moved / copied in. Returns
    the stats."""
    for name in TABLES:
        path = os.path.join(out_dir, contract.table_file(name))
        if name in tables and tables[name].parquet:
            shutil.move(tables[name].parquet, path)  # a rename when on one file system
        elif name in tables:
            tables[name].frame.to_parquet(path, index=False)
        elif os.path.exists(path):
            # A users.parquet left by an earlier run into this folder must not be picked up.
            os.remove(path)
    storage.write_local_atomically(os.path.join(out_dir, DEAD_LETTER_FILE),
                  lambda fh: _write_dead_letters(fh, [tables[t] for t in TABLES if t in tables]))
    total = sum(t.rows for t in tables.values())
    bad = sum(t.bad for t in tables.values())
    stats = {
        "files": {t.name: {"path": t.path, "rows": t.rows, "ok": t.ok, "bad": t.bad}
                  for t in (tables[n] for n in TABLES if n in tables)},
        "bad_fraction": bad / total if total else 0.0,
        "fingerprint": fingerprint,
        "data_date": data_date,
    }
    storage.write_text(os.path.join(out_dir, STATS_FILE), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _write_dead_letters(fh, tables: list[_Table]) -> None:
    """Every table's dead letters as JSON lines (sorted keys), table by table, in row order."""
    for table in tables:
        if table.dead_file:
            _copy_file(table.dead_file, fh)
        else:
            fh.write("".join(json.dumps(d, sort_keys=True) + "\n" for d in table.dead).encode("utf-8"))


def _copy_file(src: str, fh) -> None:
    with open(src, "rb") as s:
        shutil.copyfileobj(s, fh, 1 << 20)


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
