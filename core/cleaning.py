"""Cleaning rules for raw feature values: one definition, called by ingest and the Beam
transform (training) and by the query service (serving), so a value means the same thing on
both sides. ``tests/unit/core/test_cleaning.py`` feeds adversarial values through both paths.

Per feature type (core.config.FeatureType):

- id, categorical: :func:`clean_string`: Unicode NFC, surrounding whitespace trimmed, case
  kept ("F " and "F" are one value; "f" is another); an integral number is spelled as an
  integer (7, 7.0 and "7" are one id, as a parquet float column of ids reads them).
- multi_categorical: :func:`clean_multi`: split on :data:`MULTI_VALUE_SEPARATOR`, each part
  cleaned as a string, empty parts dropped.
- text: core.text.normalize_text (NFKC, lower case, non-alphanumerics to spaces).
- numeric: :func:`clean_number`: a float; a number may arrive as a string (" 33 ", "1e3");
  anything else (words, "inf", "nan") raises :class:`NotANumber`.
- history: a list of item ids, each cleaned as an id (:func:`clean_history`).
- embedding: :func:`clean_embedding`: ``dims`` finite float32 values (a list or array, or a
  string: a JSON array or values separated by whitespace / commas); another length or a
  non-finite value raises :class:`NotAVector`; missing is the zero vector.

Missing (None, NaN, or a string that is empty after trimming) is not an error: strings become
"" (the vocabulary's unknown row, no tokens) and numerics NaN, which the transform fills with
the train mean and the query service with the same mean (the manifest's serving defaults).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Iterable

import numpy as np
import pandas as pd

from core.text import normalize_text

#: Separator used by multi-categorical features ("Action|Comedy").
MULTI_VALUE_SEPARATOR = "|"
#: What counts as a number written as a string: ASCII digits, optional sign, point and
#: exponent, nothing else (Python's float() would also take "inf", "nan", "1_000", "١٢").
NUMBER_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER = re.compile(NUMBER_PATTERN)
#: Floats whose integer spelling is exact (ids read from a float column).
_EXACT_INTEGER = 2.0 ** 53


class NotANumber(ValueError):
    """A numeric feature's value is not a finite number (the message shows the value)."""


class NotAVector(ValueError):
    """An embedding feature's value is not ``dims`` finite numbers (the message says why)."""


def is_missing(value: object) -> bool:
    """None, a float NaN (pandas' missing cell) or pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _integral_spelling(value: float) -> str:
    if math.isfinite(value) and abs(value) <= _EXACT_INTEGER and value == int(value):
        return str(int(value))
    return str(value)


def clean_string(value: object) -> str:
    """An id or categorical value -> its canonical string ("" when missing)."""
    if is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"  # as pandas reads a boolean column (ingest)
    if isinstance(value, (float, np.floating)):
        return _integral_spelling(float(value))
    return unicodedata.normalize("NFC", str(value)).strip()


def clean_multi(value: object) -> str:
    """A multi-categorical value ("Action | Comedy||") -> "Action|Comedy" ("" when missing)."""
    if is_missing(value):
        return ""
    parts = (clean_string(part) for part in str(value).split(MULTI_VALUE_SEPARATOR))
    return MULTI_VALUE_SEPARATOR.join(part for part in parts if part)


def multi_values(cleaned: str) -> list[str]:
    """The parts of a value :func:`clean_multi` returned ([] for "")."""
    return cleaned.split(MULTI_VALUE_SEPARATOR) if cleaned else []


def clean_number(value: object) -> float:
    """A numeric value -> float (NaN when missing).

    Raises:
        NotANumber: a string that is not a number, a non-finite number, or a non-numeric type.
    """
    if is_missing(value):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)  # as pandas reads a boolean column (ingest)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return math.nan
        if not _NUMBER.fullmatch(text):
            raise NotANumber(f"not a number: {value!r}")
        number = float(text)
    elif isinstance(value, (int, float, np.integer, np.floating)):
        try:
            number = float(value)
        except OverflowError:  # a huge Python int
            number = math.inf
    else:
        raise NotANumber(f"not a number: {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise NotANumber(f"not a finite number: {value!r}")
    return number


def clean_history(items: Iterable[object]) -> list[str]:
    """A history's item ids, each cleaned as an id (empties kept: callers count them unknown)."""
    return [clean_string(item) for item in items]


_VECTOR_SEPARATORS = re.compile(r"[\s,]+")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def clean_embedding(value: object, dims: int) -> list[float]:
    """An embedding value -> ``dims`` Python floats, each exactly a float32 (zeros when missing).

    Raises:
        NotAVector: another length, a value that is not a number, a non-finite one, or one
            beyond float32's range.
    """
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return [0.0] * dims
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        parts = [p for p in _VECTOR_SEPARATORS.split(text) if p]
        bad = next((p for p in parts if not _NUMBER.fullmatch(p)), None)
        if bad is not None:
            raise NotAVector(f"not a number in the vector: {bad[:40]!r}")
        values = np.asarray([float(p) for p in parts], dtype=np.float64)
    elif isinstance(value, (list, tuple, np.ndarray)):
        try:
            values = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise NotAVector(f"not a list of numbers: {str(value)[:60]!r}") from None
        if np.asarray(value, dtype=object).ndim != 1:
            raise NotAVector(f"a nested list, not a vector of {dims} numbers")
    else:
        raise NotAVector(f"not a vector: {value!r} ({type(value).__name__})")
    if len(values) != dims:
        raise NotAVector(f"{len(values)} values, the feature has dims {dims}")
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) > _FLOAT32_MAX):
        at = int(np.flatnonzero(~np.isfinite(values) | (np.abs(np.nan_to_num(values)) > _FLOAT32_MAX))[0])
        raise NotAVector(f"value {at} is not a finite float32: {values[at]!r}")
    return values.astype(np.float32).astype(np.float64).tolist()


def embedding_text(values: Iterable[float]) -> str:
    """The canonical string of a cleaned vector (ingest's parquet column): shortest spellings,
    space separated; :func:`clean_embedding` reads it back to the same floats."""
    return " ".join(repr(float(v)) for v in values)


def clean_value(feature_type: str, value: object, dims: int | None = None):
    """One raw value of a ``feature_type`` feature -> its cleaned form (see the module doc;
    ``dims``: an embedding's length)."""
    if feature_type == "embedding":
        if dims is None:
            raise ValueError("an embedding feature is cleaned with its dims")
        return clean_embedding(value, dims)
    if feature_type == "numeric":
        return clean_number(value)
    if feature_type == "text":
        return "" if is_missing(value) else normalize_text(value)
    if feature_type == "multi_categorical":
        return clean_multi(value)
    if feature_type == "history":
        return clean_history(value)
    return clean_string(value)


# --------------------------------------------------------------------------- pandas twins
# Ingest cleans whole columns at a time; these apply the rules above to a Series and are
# checked against the scalar functions in tests/unit/core/test_cleaning.py.


def as_text(column: pd.Series) -> pd.Series:
    """Cells as nullable strings, numbers and booleans spelled as :func:`clean_string` does.

    In a float column (ids from parquet or JSON lines come as floats when one is missing) each
    exact integer loses its ".0"; other floats keep their float spelling.
    """
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.abs(values) <= _EXACT_INTEGER) & (np.mod(values, 1) == 0)
        text = column.astype("string")
        if integral.any():
            text[integral] = column[integral].astype("int64").astype("string")
        return text
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype("Int64").astype("string")
    return column.astype("string")


def clean_strings(column: pd.Series) -> pd.Series:
    """:func:`clean_string` over a column: nullable strings, <NA> where missing or empty."""
    if (pd.api.types.is_object_dtype(column.dtype)
            and pd.api.types.infer_dtype(column, skipna=True) not in ("string", "empty")):
        cleaned = column.map(clean_string).astype("string")  # mixed cell types: the scalar rule
    else:
        cleaned = as_text(column).str.normalize("NFC").str.strip()
    return cleaned.mask(cleaned.eq("").fillna(False))


def clean_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clean_number` over a column: (float64 values, NaN where missing or bad; bad mask).

    Bad: present but not a finite number (a NotANumber for the scalar rule). On trimmed strings
    pandas' parser accepts what :data:`NUMBER_PATTERN` does plus the spellings of infinity,
    which are bad either way, so no regex pass is needed (the scalar rule is checked against
    this one in tests/unit/core/test_cleaning.py).
    """
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.astype("float64").to_numpy()
        bad = np.isinf(values)
        return np.where(bad, np.nan, values), bad
    if (pd.api.types.is_object_dtype(column.dtype)
            and pd.api.types.infer_dtype(column, skipna=True) not in ("string", "empty")):
        text = clean_strings(column)  # mixed cell types: each spelled by the scalar rule
    else:
        text = as_text(column).str.strip()
    missing = (text.isna() | text.eq("")).fillna(True).to_numpy(dtype=bool)
    values = pd.to_numeric(text.mask(missing), errors="coerce").astype("float64").to_numpy()
    bad = ~missing & ~np.isfinite(values)
    return np.where(missing | bad, np.nan, values), bad
