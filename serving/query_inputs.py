"""Request values -> the query tower's inputs, cleaned by the rules training used.

Every value a request carries (a key, a feature, a history's ids) is checked for its JSON
type here (a wrong type is a :class:`RequestError`, an HTTP 400 naming the field) and then
cleaned by core/cleaning.py, the module the ingest and transform stages call: ``"F "`` is the
``"F"`` the model learned, ``"33"`` is 33.0, a text is normalised as the training text was.
A value that is null (or NaN, or "" for a numeric) is missing, and becomes what a missing value
became in training: "" for strings, the train mean for a numeric (the manifest's serving
default). ``tests/unit/core/test_cleaning.py`` checks that both paths give identical inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping, Optional, Sequence

import numpy as np

from core import cleaning, history

#: The towers take numerics as tf.float32: a finite float64 past this is inf to them.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(ValueError):
    """The request is malformed; the message says why (an HTTP 400)."""


def check_unicode(name: str, value: str) -> str:
    """``value`` if it encodes as UTF-8; RequestError naming ``name`` (a lone surrogate, say) else."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"{name} is not valid Unicode: {exc.reason} at position {exc.start} "
                           f"({value[exc.start:exc.end]!r})") from None
    return value


def _is_id(value) -> bool:
    """A JSON string or integer (ids are never floats or booleans on the wire)."""
    return not isinstance(value, bool) and isinstance(value, (str, int))


def clean_id(name: str, value, expected: str = "a string or integer") -> str:
    """An id (a query key, a history's item) -> its cleaned string (core.cleaning.clean_string).

    Raises:
        RequestError: not a JSON string or integer, or invalid Unicode.
    """
    if not _is_id(value):
        raise RequestError(f"{name} must be {expected}, got {type(value).__name__}")
    if isinstance(value, str):
        check_unicode(name, value)
    return cleaning.clean_string(value)


def history_items(name: str, value) -> list[str]:
    """A history as given (a JSON list of ids, oldest first) -> cleaned ids.

    An id that is empty after cleaning stays in the list: the caller counts it as unknown.
    """
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list of item ids (oldest first), got {type(value).__name__}")
    return [clean_id(f"{name}[{pos}]", item, "an item id (string or integer)") for pos, item in enumerate(value)]


def number(name: str, value, default: Optional[float]) -> float:
    """A numeric feature -> float; a missing one (null, NaN, "") -> ``default``.

    Raises:
        RequestError: not a number (words, "inf", a boolean), non-finite, beyond float32, or
            missing where ``default`` is None (no serving default published).
    """
    if isinstance(value, bool) or not (value is None or isinstance(value, (int, float, str))):
        raise RequestError(f"feature {name!r} must be a finite number, got {value!r}")
    try:
        cleaned = cleaning.clean_number(value)
    except cleaning.NotANumber:
        raise RequestError(f"feature {name!r} must be a finite number, got {value!r}") from None
    if math.isnan(cleaned):
        if default is None:
            raise RequestError(f"feature {name!r} is missing and has no serving default")
        return float(default)
    if abs(cleaned) > FLOAT32_MAX:
        raise RequestError(f"feature {name!r} = {cleaned!r} is outside the query tower's float32 "
                           f"range (|x| <= {FLOAT32_MAX:.4g})")
    return cleaned


def string(name: str, feature_type: str, value) -> str:
    """An id, categorical, multi-categorical or text feature -> its cleaned string ("" when
    null or NaN, as in training)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not _is_id(value):
        raise RequestError(f"feature {name!r} must be a string, got {type(value).__name__}")
    if isinstance(value, str):
        check_unicode(f"feature {name!r}", value)
    return cleaning.clean_value(feature_type, value)


def vector(name: str, value, dims: Optional[int]) -> list[float]:
    """An embedding feature -> ``dims`` floats; null is the zero vector (ingest's missing one).

    Raises:
        RequestError: not a JSON list of ``dims`` finite float32 numbers.
    """
    if dims is None:
        raise RequestError(f"feature {name!r}: the version publishes no dims for this embedding")
    if value is not None and not isinstance(value, list):
        raise RequestError(f"feature {name!r} must be a list of {dims} numbers, got {type(value).__name__}")
    if value is not None and any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise RequestError(f"feature {name!r} must be a list of {dims} numbers")
    try:
        return cleaning.clean_embedding(value, dims)
    except cleaning.NotAVector as err:
        raise RequestError(f"feature {name!r}: {err}") from None


def feature_input(name: str, feature_type: str, value, default=None, dims: Optional[int] = None):
    """One non-history query feature as a request gives it -> the tower's input: a float for a
    numeric (``default`` when missing), ``dims`` floats for an embedding, else a cleaned string."""
    if feature_type == "embedding":
        return vector(name, value, dims)
    if feature_type == "numeric":
        return number(name, value, default)
    return string(name, feature_type, value)


#: ``TowerInputs.derived``'s marker of a ``derive: key_count`` feature (a query-table lookup).
KEY_COUNT = "key_count"


def _derivation(feature: dict):
    """How serving computes a manifest's computed feature: its checked encoder (an embedding),
    :data:`KEY_COUNT` (a key's popularity) or None (a word count)."""
    if feature["type"] == "embedding":
        return _checked_encoder(feature)
    return KEY_COUNT if feature.get("derive") == KEY_COUNT else None


def _checked_encoder(feature: dict):
    """The loaded encoder of a manifest's computed embedding, if its folder's checksum is the
    published one."""
    from core.sentence_encoder import load_encoder

    model = load_encoder(feature["encoder"])
    if feature.get("checksum") and model.checksum != feature["checksum"]:
        raise ValueError(f"feature {feature['name']!r}: encoder {feature['encoder']!r} at {model.folder} has "
                         f"checksum {model.checksum[:12]}..., the version was trained with "
                         f"{feature['checksum'][:12]}...: install the same model")
    return model


@dataclass(frozen=True)
class TowerInputs:
    """How a version's query tower takes its inputs: what the query service builds every
    request with, and what the embed stage builds each query-table row with (so a key's
    precomputed vector is the one serving would compute: ``tests/unit/serving/test_query_vectors.py``).

    Args:
        input_names: the tower's inputs (a subset of the query features).
        feature_types: query feature name -> its schema type.
        defaults: the manifest's serving defaults (feature -> its value when missing).
        history_name / history_length: the history feature and its max_length (None / 0: none).
        catalog: the item ids a history keeps (others are ignored and counted).
        vector_dims: embedding feature name -> its dims.
        derived: computed feature name -> (its source feature names, its loaded encoder; None for a
            word count, :data:`KEY_COUNT` for a key's popularity): built
            from the request's cleaned source values when the request does not carry the value.
    """

    input_names: tuple
    feature_types: dict
    defaults: dict
    history_name: Optional[str]
    history_length: int
    catalog: Collection[str]
    vector_dims: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)
    #: The version's query table ({key: row}): where a ``derive: key_count`` feature of a request
    #: is looked up (a key not in it has never been seen: popularity 0).
    query_table: Mapping = field(default_factory=dict)

    @classmethod
    def of(cls, serving: dict, input_names: Sequence[str], catalog: Collection[str],
           query_table: Optional[Mapping] = None) -> "TowerInputs":
        """From a manifest's ``serving`` section (publishing/publish.py's serving_section); each
        computed embedding's encoder is loaded and checked against the published checksum.

        Raises:
            ValueError: an encoder's model folder is not the one the version was trained with.
        """
        spec = next((f for f in serving["query_features"] if f["type"] == "history"), None)
        return cls(tuple(input_names), {f["name"]: f["type"] for f in serving["query_features"]},
                   dict(serving.get("defaults") or {}), spec["name"] if spec else None,
                   int(spec.get("max_length", 20)) if spec else 0, catalog,
                   {f["name"]: int(f["dims"]) for f in serving["query_features"] if f["type"] == "embedding"},
                   {f["name"]: (tuple(f["source"]), _derivation(f))
                    for f in serving["query_features"] if f.get("source") and f["name"] in input_names},
                   query_table if query_table is not None else {})

    def history_input(self, base: list, clicks: Optional[list]) -> tuple[str, dict, frozenset]:
        """(the tower's history string, {"used", "ignored", "cut"}, the ids as given): ``base``
        then ``clicks``, ids outside the catalog dropped (counted), the rest cut to the most
        recent ``history_length``."""
        given = [*base, *(clicks or [])]
        known = [item for item in given if item in self.catalog]
        kept = history.extend(known, [], self.history_length)
        return history.join(kept), {"used": len(kept), "ignored": len(given) - len(known),
                                    "cut": len(known) - len(kept)}, frozenset(given)

    def _derived_value(self, name: str, source: tuple, derivation, cleaned: dict):
        """A computed feature's value from the request's ``cleaned`` source values: the key's
        query-table popularity (:data:`KEY_COUNT`; 0 for a key the version never saw), the source
        text's word count (None) or the encoder's vector."""
        from core.sentence_encoder import key_popularity, source_text, word_count

        if derivation == KEY_COUNT:
            row = self.query_table.get(cleaned.get(source[0])) or {}
            return float(row.get(name, key_popularity(0)))
        text = source_text([cleaned.get(s, "") for s in source])
        if derivation is None:
            return word_count(text)
        return derivation.encode([text])[0].astype(np.float64).tolist()

    def build(self, features: dict, clicks: Optional[list] = None) -> tuple[dict, Optional[dict], frozenset]:
        """(exactly the tower's inputs, each of the right kind: strings for ids / categoricals /
        text, the history joined with ``clicks`` appended; the history note or None; the
        history's ids as given).

        Raises:
            RequestError: a tower input missing, an unknown one, or a value of the wrong kind.
        """
        # Source-only features (tower: false): sent by the request, read by an encoder alone.
        source_only = list(dict.fromkeys(s for source, _ in self.derived.values() for s in source
                                         if s not in self.input_names))
        missing = [n for n in self.input_names if n not in features and n not in self.derived]
        missing += list(dict.fromkeys(s for name, (source, _) in self.derived.items() if name not in features
                                      for s in source if s in source_only and s not in features))
        if missing:
            raise RequestError(f"missing query feature(s) {missing}; the query tower takes {list(self.input_names)}"
                               + (f" and its encoder reads {source_only}" if source_only else ""))
        extra = sorted(set(features) - set(self.input_names) - set(source_only))
        if extra:
            raise RequestError(f"unknown query feature(s) {extra}; the query tower takes {list(self.input_names)}")
        out, note, given = {}, None, frozenset()
        for name in (*self.input_names, *source_only):
            if name not in features:  # a computed embedding, from its sources below
                continue
            value, feature_type = features[name], self.feature_types.get(name)
            if name == self.history_name:
                out[name], note, given = self.history_input(history_items(f"feature {name!r}", value), clicks)
            else:
                out[name] = feature_input(name, feature_type or "id", value, self.defaults.get(name),
                                          self.vector_dims.get(name))
        for name, (source, derivation) in self.derived.items():
            if name not in out:
                out[name] = self._derived_value(name, source, derivation, out)
        return {n: out[n] for n in self.input_names}, note, given
