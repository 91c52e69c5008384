"""Typed models of the JSON documents stages hand each other, with their one reader and writer.

=========================  ===================  ==============================================
document                   model                written as (unchanged on-disk format)
=========================  ===================  ==============================================
``metrics.json``           :class:`EvalMetrics`      ``json.dumps(doc, indent=2)`` (producer's key order)
``stage.json``             :class:`StageRecord`      ``indent=2, sort_keys=True, default=str``
``stage_error.json``       :class:`StageError`       ``indent=2`` (producer's key order)
``summary.json``           :class:`RunSummary`       ``indent=2, sort_keys=True, default=str``
``manifest.json``          :class:`VersionManifest`  ``indent=2, sort_keys=True``
=========================  ===================  ==============================================

A model is a validated, read-only view of one document: its fields are typed (attribute access
for what consumers rely on) and every key it does not name is kept (``extra="allow"``:
metrics carry ``recall_at_<K>`` for every configured K, manifests whatever a publisher adds).
:meth:`Document.to_dict` gives back the document exactly as it was read or built — the same
keys, values and key order — so a model never rewrites what it carries: writing a model writes
the bytes its producer wrote before there were models, and readers written against plain dicts
(the UI, the reports, old published stores) keep working.

Readers validate: a document that does not match raises :class:`ContractError` naming the file
and the dotted field (``metrics.json: popularity.recall_at_10: Input should be a valid number``).
Every read and write goes through :mod:`core.storage`, so gs:// paths work like local ones.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Mapping, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from core import storage

D = TypeVar("D", bound="Document")
#: A metric name evaluate writes per cut-off: recall_at_<K>, ndcg_at_<K>.
_METRIC_RE = re.compile(r"(recall|ndcg)_at_\d+")


class ContractError(ValueError):
    """A stage document does not match its contract; the message names the file and the field."""


class Document(BaseModel):
    """Base of the stage documents: typed fields, open keys, and the document kept verbatim."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _raw: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data, handler):
        """Remember the mapping as given: :meth:`to_dict` returns it, so no key is reordered,
        renamed or coerced (an int stays an int where a field is typed float)."""
        model = handler(data)
        if isinstance(data, Mapping):
            model._raw = copy.deepcopy(dict(data))
        return model

    def to_dict(self) -> dict:
        """The document as a plain dict, exactly as read or built (a deep copy)."""
        return copy.deepcopy(self._raw)

    @classmethod
    def parse(cls: type[D], doc: Any, where: str) -> D:
        """Validate ``doc`` (parsed JSON) as this document.

        Args:
            where: the file (or a description of the source), for the error message.
        Raises:
            ContractError: naming ``where`` and each bad field.
        """
        if isinstance(doc, cls):
            return doc
        if not isinstance(doc, Mapping):
            raise ContractError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise ContractError(f"{where}: " + "; ".join(_problems(exc))) from None


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "missing" if err["type"] == "missing" else err["msg"]
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our own sentence, without pydantic's "Value error, "
            key, sep, rest = msg.partition(": ")
            if sep and _METRIC_RE.fullmatch(key):  # an open metric key: name it in the field path
                loc, msg = ".".join(p for p in (loc, key) if p), rest
        out.append(f"{loc or '(top level)'}: {msg}")
    return out


# -- reading and writing -----------------------------------------------------------------------


def read_document(model: type[D], path: str) -> D:
    """Read and validate one JSON document.

    Raises:
        FileNotFoundError: no such file.
        ContractError: not valid JSON, or it does not match ``model`` (file and field named).
    """
    return parse_document(model, storage.read_bytes(path), path)


def parse_document(model: type[D], raw: bytes | str, where: str) -> D:
    """Validate a document's bytes (already read); ``where`` names it in errors."""
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except ValueError as exc:  # JSONDecodeError / UnicodeDecodeError
        raise ContractError(f"{where}: not valid JSON ({exc})") from None
    return model.parse(doc, where)


def _write(model: type[Document], path: str, doc, **dump_options) -> Document:
    record = model.parse(doc, path)  # a producer's bug fails here, not in the stage that reads it
    storage.write_text(path, json.dumps(record.to_dict(), **dump_options))
    return record


# -- stage.json / stage_error.json -------------------------------------------------------------


class StageRecord(Document):
    """``stage.json``: what every stage leaves beside its outputs (:func:`core.summary.stage_record`)."""

    stage: str
    seconds: float  # wall seconds of the stage body
    result: dict[str, Any]  # the stage function's result dict
    cpu_seconds: Optional[float] = None  # user + system, this process and its children
    peak_rss_mb: Optional[float] = None  # MB (10^6 bytes)


class StageError(Document):
    """``stage_error.json``: written instead of stage.json when the stage raised."""

    stage: str
    error: str  # "ExceptionType: message"
    seconds: float


def write_stage_record(path: str, record: Mapping | StageRecord) -> StageRecord:
    return _write(StageRecord, path, record, indent=2, sort_keys=True, default=str)


def read_stage_record(path: str) -> StageRecord:
    return read_document(StageRecord, path)


def write_stage_error(path: str, record: Mapping | StageError) -> StageError:
    return _write(StageError, path, record, indent=2)


# -- metrics.json ------------------------------------------------------------------------------


def _check_metric_keys(extra: Mapping | None) -> None:
    """recall_at_<K> / ndcg_at_<K> keys must hold numbers (or null: nothing to score)."""
    for key, value in (extra or {}).items():
        if _METRIC_RE.fullmatch(key) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key}: must be a number, got {type(value).__name__}")


class _Scores(Document):
    """A block of recall_at_<K> / ndcg_at_<K> (extra keys) with optional intervals."""

    ci95: Optional[dict[str, list[Optional[float]]]] = None  # metric -> [lo, hi]

    @model_validator(mode="after")
    def _metrics_are_numbers(self):
        _check_metric_keys(self.__pydantic_extra__)
        return self

    def metric(self, name: str) -> Optional[float]:
        """A metric of this block (``recall_at_10``...), None when not computed."""
        return (self.__pydantic_extra__ or {}).get(name)


class PairedDifference(Document):
    mean: Optional[float] = None
    ci95: Optional[list[Optional[float]]] = None  # [lo, hi]


class PopularityMetrics(_Scores):
    """The popularity baseline, same keys as the model's; ``diff``: model minus popularity, paired."""

    diff: Optional[dict[str, PairedDifference]] = None


class LiveComparison(_Scores):
    """``metrics["live"]``: the store's live version on the same keys, or ``{"version", "error"}``."""

    version: str
    error: Optional[str] = None  # set when the live version could not be evaluated
    diff: Optional[dict[str, PairedDifference]] = None
    n_items_missing: Optional[int] = None
    candidate: Optional[dict[str, Any]] = None  # refit live: the candidate on the comparable keys
    compared_on: Optional[str] = None


class Sampling(Document):
    max_queries: Optional[int] = None  # 0 / None: every key
    seed: int
    interval: str


class Protocol(Document):
    per: str  # "query" | "interaction"
    mask_seen: bool
    split: Optional[Any] = None  # the transform's split method (stats.json "split")


class SliceMetrics(Document):
    n: int
    # recall_at_10, popularity_recall_at_10 (None when n is 0), cold: chance_recall_at_10


class EvalMetrics(_Scores):
    """``metrics.json`` (:func:`evaluation.evaluate.evaluate_model`); units: fractions in [0, 1]."""

    popularity: PopularityMetrics
    sampled: bool  # fewer keys scored than eligible
    n_queries: int  # keys scored
    n_queries_total: int  # keys eligible
    n_items: int  # catalog size
    n_pairs: int  # relevant (key, item) pairs of the scored keys
    sampling: Sampling
    protocol: Protocol
    slices: Optional[dict[str, SliceMetrics]] = None  # head / torso / tail / cold, when enabled
    live: Optional[LiveComparison] = None  # absent: no comparison asked for; null: no live version
    cascade: Optional[dict[str, Any]] = None  # train.cascade: retrieval top-N vs re-ranked (evaluation/cascade.py)


def write_metrics(path: str, metrics: Mapping | EvalMetrics) -> EvalMetrics:
    return _write(EvalMetrics, path, metrics, indent=2)


def read_metrics(path: str) -> EvalMetrics:
    return read_document(EvalMetrics, path)


# -- summary.json ------------------------------------------------------------------------------


class SummaryMetrics(_Scores):
    popularity_recall_at_10: Optional[float] = None
    n_queries: Optional[int] = None


class SummaryIndex(Document):
    kind: Optional[str] = None  # "brute_force" | "tree_ah"
    n_items: Optional[int] = None
    recall_at_10_vs_exact: Optional[float] = None
    qps_batched: Optional[float] = None  # queries per second
    qps_single: Optional[float] = None
    qps_brute_force: Optional[float] = None
    speedup_vs_brute_force: Optional[float] = None
    params: Optional[dict[str, Any]] = None
    tuning: Optional[dict[str, Any]] = None


class RunSummary(Document):
    """``summary.json`` (:func:`core.summary.build_summary`)."""

    run_id: str
    finished_at: str  # UTC, YYYY-MM-DDTHH:MM:SSZ
    metrics: SummaryMetrics
    slices: Optional[dict[str, dict[str, Any]]] = None
    index: SummaryIndex
    published: bool
    baseline: Optional[dict[str, Any]] = None
    version: Optional[str] = None
    reasons: list[str]
    store: Optional[str] = None
    stage_seconds: dict[str, float]
    stage_resources: dict[str, dict[str, Optional[float]]] = Field(default_factory=dict)


def write_summary(path: str, summary: Mapping | RunSummary) -> RunSummary:
    return _write(RunSummary, path, summary, indent=2, sort_keys=True, default=str)


def read_summary(path: str) -> RunSummary:
    return read_document(RunSummary, path)


# -- manifest.json -----------------------------------------------------------------------------


class FileEntry(Document):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, strict=True)  # bytes


class PublishedWeights(Document):
    mode: str  # train.refit: "none" | ...
    splits: list[str]  # the splits the published weights trained on


class ServingSection(Document):
    """What the query service needs to turn a request into tower inputs (:func:`publishing.publish.serving_section`)."""

    query_key: str
    query_key_type: str
    query_features: list[dict[str, Any]]  # {"name", "type"[, "max_length"]}
    defaults: dict[str, Any]  # feature -> the raw value a request without it takes
    display_fields: list[str]
    index_kind: Optional[str] = None
    reorder_k: Optional[int] = None
    embedding_dims: Optional[int] = None
    similarity: str = "cosine"  # train.similarity (core/similarity.py); older versions: cosine
    cascade: Optional[dict[str, Any]] = None  # the pre-ranker: {"top_n", "heads", ...}; None: retrieval alone
    query_vectors: Optional[str] = None  # index.query_vectors: the key -> vector file; None: the tower always


class VersionManifest(Document):
    """``versions/<id>/manifest.json`` (:meth:`core.store.VersionStore.publish`).

    Only ``files`` is always there: the store accepts any manifest a publisher hands it and adds
    ``version``, ``created`` and ``files``; the pipeline's publish adds the rest.
    """

    files: dict[str, FileEntry]  # relative path -> checksum and size
    version: Optional[str] = None
    created: Optional[str] = None  # ISO 8601, UTC, seconds
    run_id: Optional[str] = None
    metrics: Optional[dict[str, Any]] = None  # the run's metrics.json (older runs: fewer keys)
    index: Optional[dict[str, Any]] = None  # the index stage's index_metrics.json
    gate: Optional[dict[str, Any]] = None  # {"publish", "reasons", "baseline"}
    lineage: Optional[dict[str, Any]] = None
    published_weights: Optional[PublishedWeights] = None
    serving: Optional[ServingSection] = None


def write_manifest(path: str, manifest: Mapping | VersionManifest) -> VersionManifest:
    return _write(VersionManifest, path, manifest, indent=2, sort_keys=True)


def read_manifest(path: str) -> VersionManifest:
    return read_document(VersionManifest, path)
