"""Answer retrieval requests from one published version (query tower + ScaNN index).

A request is one of::

    {"query": "nike running shoes"}       only when the query key is a text feature
    {"user_id": "7"}                      the key looked up in the version's query table
    {"features": {"user_id": "7", "age": 33.0}}  raw query features, by name

plus, for a model with a history feature, an optional ``"history": ["item", ...]`` (oldest
first): clicks since the version's data date, appended to the key's history from the query
table (or to the history given in ``features``). A history alone (no selector) is a user the
table does not know: the other query features take the values a missing one takes in
training (the manifest's ``serving.defaults``). Ids not in the catalog are ignored and
counted; the history is cut to the feature's ``max_length`` most recent (core/history.py),
and the answer says what was used: ``"history": {"used", "ignored", "cut"}``. With
``exclude_seen`` the request's clicks are excluded as well as the key's seen items.

How requests map to tower inputs comes from the manifest's "serving" section (query
key name and type, query feature names and types), written by publishing.publish from
the run config; see that module for why it is stored rather than inferred.

Scores follow the model's ``similarity`` (manifest serving section; core/similarity.py): the
cosine of unit embeddings by default, a dot product, or minus the squared euclidean distance;
always best (highest) first.

Cascade (a version published with train.cascade's pre-ranker, manifest ``serving.cascade``): the
index's top max(top_n, k) unseen candidates are re-scored by the pre-ranker (core/prerank.py: its
query tower once per request, the precomputed item vectors of the candidates) and the best k
returned; every answer says ``"reranked": true`` and ``"candidates"`` (how many were re-scored),
its ``scores`` being the pre-ranker's logits. ``rerank=False`` at load (``--no-rerank``) serves
retrieval alone (``"reranked": false``), as does a version without a pre-ranker.

Both towers frozen (``index.query_vectors``): a version may carry every query-table key's vector,
computed by the embed stage with the same input rules. A request by ``user_id`` alone (no
request-time ``history``) is then answered from that vector without running the query tower;
a request with a history or features runs the tower. Every answer says which
(``"query_vector": "precomputed" | "tower"``); ``query_vectors=False`` at load always runs it.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from typing import NamedTuple, Optional, Sequence

import numpy as np

from core import history, storage
from core import similarity as similarities
from core.contracts import files as names
from core.contracts.records import VersionManifest
from core.prerank import InteractionShape, rerank
from core.storage import is_gcs
from core.store import VersionStore
from core.text import normalize_text
from core.towers import Tower
from serving import query_inputs
from serving.query_inputs import FLOAT32_MAX, RequestError  # noqa: F401 (this module's API)

MAX_K = 1000
SELECTORS = ("query", "user_id", "features")
#: Optional beside a selector (or alone): request-time clicks, oldest first.
HISTORY = "history"
#: A cosine model's embedding is L2-normalised; a row whose norm strays this far from 1 is
#: what features far outside the training range produce (overflow to 0 or NaN). The other
#: similarities' rows have no fixed norm: only a non-finite one is degenerate there.
_NORM_TOLERANCE = 1e-3

# Version layout: core.contracts' names, the ones publishing.publish writes (serving must not
# import the indexer).
QUERY_TOWER = names.QUERY_TOWER_DIR
SCANN_DIR = names.VERSION_SCANN_DIR
ITEM_IDS = names.VERSION_ITEM_IDS_FILE
ITEMS = names.VERSION_ITEMS_FILE
QUERY_TABLE = names.QUERY_TABLE_FILE
SEEN = names.SEEN_FILE


class UnknownKeyError(RequestError):
    """The request names a query key absent from the version's query table (an HTTP 404)."""


class NoLiveVersionError(LookupError):
    """The store has no CURRENT version to serve."""


class Resolved(NamedTuple):
    """One validated request: the tower's inputs, the query key (None = none given), what was
    done to its history (None = the model has none) and the request-time clicks (excluded with
    exclude_seen)."""

    features: dict
    key: Optional[str]
    history: Optional[dict] = None
    clicks: frozenset = frozenset()
    #: Row of the version's precomputed query vectors answering it (None: run the tower).
    precomputed: Optional[int] = None


def _searcher_module():
    from scann import scann_ops_pybind

    return scann_ops_pybind


def _lines(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 file (local or gs://), split on newlines only: a JSON
    string may hold U+2028 and the like, which ``str.splitlines`` would split on."""
    return [line.rstrip("\r") for line in storage.read_text(path).split("\n") if line.strip()]


def _read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def _load_query_vectors(version: str, folder: str, filename: str, dims: Optional[int]
                        ) -> tuple[dict[str, int], np.ndarray]:
    """({key: row}, float32 [K, D]) of a version's ``query_vectors.parquet``.

    Raises:
        ValueError: the vectors' width is not the index's (a version assembled from two runs).
    """
    from core import vector_table

    keys, matrix = vector_table.read_keyed(storage.join(folder, filename), names.QUERY_VECTORS_KEY_COLUMN)
    if len(keys) and dims is not None and matrix.shape[1] != int(dims):
        raise ValueError(f"version {version}: {filename} holds {matrix.shape[1]}-d vectors, the index {dims}-d")
    return {key: row for row, key in enumerate(keys)}, matrix


class Retriever:
    """One loaded version. Thread-safe for concurrent ``retrieve`` calls (reads only)."""

    def __init__(self, version: str, folder: str, manifest: dict, tower: Tower, searcher,
                 item_ids: list[str], items: dict[str, dict], query_table: dict[str, dict],
                 seen: dict[str, set[str]], prerank: Optional["PreRanker"] = None,
                 query_vectors: Optional[tuple[dict[str, int], np.ndarray]] = None):
        self.version = version
        #: ({key: row}, float32 [K, D]): the version's precomputed query vectors (None: the tower always).
        self.query_vectors = query_vectors
        #: The cascade's pre-ranker (None: retrieval alone answers).
        self.prerank = prerank
        self.folder = folder
        self.manifest = manifest
        self.tower = tower
        self.searcher = searcher
        self.item_ids = item_ids
        self.items = items
        self.query_table = query_table
        self.seen = seen
        serving = manifest["serving"]
        #: train.similarity of the published model (core/similarity.py): the index's distance
        #: measure and the sign of its scores follow it.
        self.similarity: str = similarities.check(serving.get("similarity") or similarities.DEFAULT_SIMILARITY)
        self.query_key: str = serving["query_key"]
        self.query_key_type: str = serving["query_key_type"]
        #: How a request's values become the tower's inputs; the embed stage builds each
        #: query-table row's precomputed vector by the same rules.
        self.inputs = query_inputs.TowerInputs.of(serving, tower.input_names, items, query_table)
        self.feature_types: dict[str, str] = self.inputs.feature_types
        self.history_name: Optional[str] = self.inputs.history_name
        self.history_length: int = self.inputs.history_length
        #: What each query feature is when a request does not give it (history-only requests).
        self.defaults: dict = self.inputs.defaults
        tree = serving.get("index_kind") == "tree_ah"
        self.reorder_k: Optional[int] = serving.get("reorder_k") if tree else None
        #: Every leaf of the tree: the fallback search when the leaves searched by default hold
        #: fewer than the requested candidates (ScaNN pads such an answer with NaN scores).
        self.num_leaves: Optional[int] = (((manifest.get("index") or {}).get("params") or {}).get("num_leaves")
                                          if tree else None)
        # The searcher is a C++ object; serialise calls rather than trust its re-entrancy.
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str, version: Optional[str] = None, cache_dir: Optional[str] = None,
             rerank: bool = True, query_vectors: bool = True) -> "Retriever":
        """Load ``version`` (None = the live one) from a store (local folder or gs://).

        Args:
            cache_dir: where a gs:// version is downloaded (default: a new temp folder).
            rerank: use the version's pre-ranker when it has one (False: retrieval alone).
            query_vectors: answer requests by key alone from the version's precomputed query
                vectors when it has them (False: always run the query tower).
        Raises:
            NoLiveVersionError: version is None and the store has no CURRENT.
            core.store.VersionNotFoundError / IntegrityError: missing or corrupt version.
        """
        vs = VersionStore(store)
        if version is None:
            version = vs.current()
            if version is None:
                raise NoLiveVersionError(f"store {store} has no live version (no CURRENT); publish one first")
        # A local store is served in place; only a gs:// version needs a download folder.
        if cache_dir is None and is_gcs(store):
            cache_dir = tempfile.mkdtemp(prefix="twotower-serve-")
        folder = vs.fetch_version(version, cache_dir or "")
        manifest = vs.read_manifest(version)
        return cls.from_folder(version, folder, manifest, rerank=rerank, query_vectors=query_vectors)

    @classmethod
    def from_folder(cls, version: str, folder: str, manifest: dict, rerank: bool = True,
                    query_vectors: bool = True) -> "Retriever":
        """Build from an already verified version folder.

        The folder is normally local (:meth:`load` downloads a gs:// version first). A gs://
        folder is downloaded into a new temp folder here: the ScaNN searcher and TensorFlow
        read only local files (TF's GCS filesystem ignores ``STORAGE_EMULATOR_HOST``).
        Every other file is read through :mod:`core.storage`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Validated against the manifest contract (a dict from VersionStore.read_manifest, or the record).
        record = VersionManifest.parse(manifest, f"version {version}: {names.MANIFEST_FILE}")
        if record.serving is None:
            raise ValueError(f"version {version}: manifest has no 'serving' section (published by an older build?)")
        manifest = record.to_dict()
        if is_gcs(folder):
            folder = storage.download_tree(folder, tempfile.mkdtemp(prefix="twotower-serve-"))
        serving = manifest["serving"]
        tower = Tower(storage.join(folder, QUERY_TOWER))
        searcher = _searcher_module().load_searcher(storage.join(folder, SCANN_DIR))
        item_ids = _lines(storage.join(folder, ITEM_IDS))
        table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(folder, ITEMS))))
        items = {str(row["item_id"]): row for row in table.drop_columns(["embedding"]).to_pylist()}
        key = serving["query_key"]
        query_table = {str(row[key]): row for row in _read_jsonl(storage.join(folder, QUERY_TABLE))}
        seen = {str(row["key"]): {str(i) for part in names.SPLITS for i in row.get(part, [])}
                for row in _read_jsonl(storage.join(folder, SEEN))}
        check_counts(version, searcher, item_ids, items, tower, serving)
        prerank = PreRanker.load(version, folder, serving["cascade"], item_ids, tower) \
            if rerank and serving.get("cascade") else None
        vectors = (_load_query_vectors(version, folder, serving["query_vectors"], serving.get("embedding_dims"))
                   if query_vectors and serving.get("query_vectors") else None)
        return cls(version, folder, manifest, tower, searcher, item_ids, items, query_table, seen, prerank, vectors)

    # -- requests --------------------------------------------------------------------------
    def _features_for(self, request: dict) -> Resolved:
        """Validate one request -> :class:`Resolved`."""
        if not isinstance(request, dict):
            raise RequestError(f"a request must be a JSON object, got {type(request).__name__}")
        chosen = [s for s in SELECTORS if s in request]
        unknown = sorted(set(request) - set(SELECTORS) - {HISTORY})
        if unknown:
            raise RequestError(f"unknown request field(s) {unknown}; use exactly one of {list(SELECTORS)}"
                               + (f" and optionally {HISTORY!r}" if self.history_name else ""))
        clicks = None
        if HISTORY in request:
            if self.history_name is None:
                raise RequestError(f"this model has no history feature; a request takes exactly one of "
                                   f"{list(SELECTORS)}")
            clicks = query_inputs.history_items(f"{HISTORY!r}", request[HISTORY])
        if len(chosen) > 1 or (not chosen and clicks is None):
            alone = f", or a {HISTORY!r} alone" if self.history_name else ""
            raise RequestError(f"a request needs exactly one of {list(SELECTORS)}{alone}, got {chosen or 'none'}")
        if not chosen:
            missing = [n for n in self.tower.input_names if n != self.history_name and n not in self.defaults]
            if missing:
                raise ValueError(f"version {self.version}: the manifest has no serving default for {missing}")
            features = {n: self.defaults[n] for n in self.tower.input_names if n != self.history_name}
            features[self.history_name] = []
            return self._with_clicks(self._check_features(features, clicks), None, clicks)
        selector = chosen[0]
        value = request[selector]
        if selector == "query":
            if self.query_key_type != "text":
                raise RequestError(f"free-text 'query' requests need a text query key; this model's key is "
                                   f"{self.query_key!r} ({self.query_key_type}); send 'user_id' or 'features'")
            if not isinstance(value, str):
                raise RequestError(f"'query' must be a string, got {type(value).__name__}")
            query_inputs.check_unicode("'query'", value)
            features = {self.query_key: value}
            if self.history_name:
                features[self.history_name] = []
            return self._with_clicks(self._check_features(features, clicks), value, clicks)
        if selector == "user_id":
            if self.query_key != "user_id":
                raise RequestError(f"this model's query key is {self.query_key!r}, not 'user_id'")
            key = query_inputs.clean_id("'user_id'", value)
            if key not in self.query_table:
                raise UnknownKeyError(f"unknown user_id {key[:200]!r}: not in version {self.version}'s query table")
            row = self.query_table[key]
            incomplete = [n for n in self.tower.input_names if row.get(n) is None]
            if incomplete:
                # A data problem in the published version, not the caller's fault: not a RequestError.
                raise ValueError(f"version {self.version}: query table row for user_id {key!r} lacks "
                                 f"feature(s) {incomplete}")
            features = {n: row[n] for n in self.tower.input_names}
            resolved = self._with_clicks(self._check_features(features, clicks), key, clicks)
            if clicks is None and self.query_vectors is not None and key in self.query_vectors[0]:
                # Nothing fresher than the table: the embed stage's vector of these very inputs.
                return resolved._replace(precomputed=self.query_vectors[0][key])
            return resolved
        if not isinstance(value, dict):
            raise RequestError(f"'features' must be an object of feature name -> value, got {type(value).__name__}")
        given = dict(value)
        if self.history_name:
            given.setdefault(self.history_name, [])  # features without a history: none known
        checked = self._check_features(given, clicks)
        key = checked[0][self.query_key] if self.query_key in checked[0] else None
        return self._with_clicks(checked, key or None, clicks)

    def _with_clicks(self, checked: tuple[dict, Optional[dict], frozenset], key: Optional[str],
                     clicks: Optional[list]) -> Resolved:
        features, note, history_items = checked
        return Resolved(features, key, note, history_items | frozenset(clicks or ()))

    def _check_features(self, features: dict, clicks: Optional[list[str]] = None
                        ) -> tuple[dict, Optional[dict], frozenset]:
        """(the tower's inputs, the history note or None, the history's ids as given, which
        exclude_seen excludes): :meth:`serving.query_inputs.TowerInputs.build`."""
        return self.inputs.build(features, clicks)

    def _search(self, vectors: np.ndarray, fetch: int, pre: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
        """(positions int [B, fetch], scores float32 [B, fetch]), best first.

        A tree index searches a fraction of its leaves; when they hold fewer than ``fetch``
        points ScaNN pads the row with NaN scores. Such rows are searched again over every
        leaf, so a large k is answered in full rather than cut short.
        """
        with self._lock:
            idx, scores = self.searcher.search_batched(vectors, final_num_neighbors=fetch,
                                                       pre_reorder_num_neighbors=pre)
            idx, scores = np.array(idx), np.array(scores)
            short = ~np.isfinite(scores).all(axis=1)
            if short.any() and self.num_leaves:
                more_idx, more_scores = self.searcher.search_batched(
                    vectors[short], final_num_neighbors=fetch, pre_reorder_num_neighbors=pre,
                    leaves_to_search=int(self.num_leaves))
                idx[short], scores[short] = np.asarray(more_idx), np.asarray(more_scores)
        return idx, similarities.scores_from_searcher(scores, self.similarity)

    def _query_vectors(self, resolved: Sequence[Resolved]) -> np.ndarray:
        """float32 [B, D]: each request's query vector, the precomputed row where it has one, the
        query tower (one call for the rest) otherwise."""
        tower_rows = [i for i, r in enumerate(resolved) if r.precomputed is None]
        if len(tower_rows) == len(resolved):
            return self.tower.embed({name: [r.features[name] for r in resolved] for name in self.tower.input_names})
        table = self.query_vectors[1]
        vectors = np.empty((len(resolved), table.shape[1]), dtype=np.float32)
        known = [i for i, r in enumerate(resolved) if r.precomputed is not None]
        vectors[known] = table[[resolved[i].precomputed for i in known]]
        if tower_rows:
            vectors[tower_rows] = self.tower.embed({name: [resolved[i].features[name] for i in tower_rows]
                                                    for name in self.tower.input_names})
        return vectors

    def _embedding_error(self, features: dict) -> RequestError:
        """Why a request's features gave a degenerate embedding (see :meth:`answer_resolved`)."""
        numeric = {n: features[n] for n in sorted(features) if self.feature_types.get(n) == "numeric"}
        return RequestError("the query tower cannot embed these features (its output is degenerate); "
                            f"numeric features far outside their training range cause this: {numeric}")

    def _seen_for(self, key: Optional[str]) -> set[str]:
        """Items the key interacted with; text keys also match their normalised form."""
        if key is None:
            return set()
        if key in self.seen:
            return self.seen[key]
        if self.query_key_type == "text":
            return self.seen.get(normalize_text(key), set())
        return set()

    @staticmethod
    def _check_k(k) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise RequestError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        return k

    # -- answering -------------------------------------------------------------------------
    def retrieve(self, request: dict, k: int = 10, exclude_seen: bool = False) -> dict:
        """Top-k items for one request: {"items": [{"item_id", display...}], "scores", "version"}."""
        return self.retrieve_batch([request], k=k, exclude_seen=exclude_seen)[0]

    def resolve(self, request: dict) -> Resolved:
        """Validate one request -> :class:`Resolved` (tower inputs, query key or None, ...).

        Raises:
            RequestError: the request is malformed (UnknownKeyError: its key is unknown).
        """
        return self._features_for(request)

    def retrieve_batch(self, requests: Sequence[dict], k: int = 10, exclude_seen: bool = False) -> list[dict]:
        """Answer several requests with one query-tower call and one batched search.

        With ``exclude_seen`` each query over-fetches k + |seen items| candidates so k
        unseen ones remain after filtering (fewer only when the catalog runs out).
        Raises:
            RequestError: naming the first invalid request (by position) and why.
        """
        k = self._check_k(k)
        if not isinstance(exclude_seen, bool):
            raise RequestError(f"exclude_seen must be true or false, got {exclude_seen!r}")
        if not isinstance(requests, (list, tuple)) or not requests:
            raise RequestError("requests must be a non-empty list")
        resolved = []
        for pos, req in enumerate(requests):
            try:
                resolved.append(self.resolve(req))
            except RequestError as exc:
                if len(requests) == 1:
                    raise
                raise type(exc)(f"request {pos}: {exc}") from exc
        answers = self.answer_resolved(resolved, [k] * len(resolved), [exclude_seen] * len(resolved))
        for pos, answer in enumerate(answers):
            if isinstance(answer, RequestError):
                if len(answers) == 1:
                    raise answer
                raise RequestError(f"request {pos}: {answer}") from answer
        return answers

    def answer_resolved(self, resolved: Sequence[Resolved], ks: Sequence[int],
                        exclude_seen: Sequence[bool]) -> list:
        """One query-tower call and one batched search for already-resolved requests.

        Each request keeps its own k and exclude_seen (the search fetches the largest need),
        so requests from different clients can share the call. Returns, per request, its
        answer dict, or the RequestError that concerns it alone: finite inputs far outside the
        training range (age = -1e30) overflow inside the tower, and its normalised embedding
        comes out NaN or all zeros, whose "scores" would be NaN (invalid JSON) or -0.0 for
        every item. Such rows are never searched.
        """
        resolved = [r if isinstance(r, Resolved) else Resolved(*r) for r in resolved]
        vectors = self._query_vectors(resolved)
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        good = np.isfinite(norms)
        if similarities.unit_rows(self.similarity):
            good &= np.abs(norms - 1.0) <= _NORM_TOLERANCE
        out: list = [None if ok else self._embedding_error(r.features) for ok, r in zip(good, resolved)]
        rows = np.flatnonzero(good)
        if not len(rows):
            return out
        seen_sets = [self._seen_for(resolved[r].key) | resolved[r].clicks if exclude_seen[r] else set()
                     for r in rows]
        n_items = len(self.item_ids)
        # With a pre-ranker each request's top max(top_n, k) unseen candidates are re-scored.
        wanted = [max(ks[r], self.prerank.top_n) if self.prerank else ks[r] for r in range(len(resolved))]
        fetch = min(n_items, max(wanted[r] + len(seen) for r, seen in zip(rows, seen_sets)))
        pre = max(fetch, self.reorder_k) if self.reorder_k else None
        idx, scores = self._search(vectors[rows], fetch, pre)
        candidates = []
        for r, row_idx, row_scores, seen in zip(rows, idx, scores, seen_sets):
            positions, kept = [], []
            for i, score in zip(row_idx, row_scores):
                if not 0 <= int(i) < n_items or not math.isfinite(float(score)):
                    continue  # padding: the index holds fewer candidates than asked for
                if self.item_ids[int(i)] in seen:
                    continue
                positions.append(int(i))
                kept.append(float(score))
                if len(positions) == wanted[r]:
                    break
            candidates.append((positions, kept))
        if self.prerank is not None:
            candidates = self.prerank.rerank_lists({n: [resolved[r].features[n] for r in rows]
                                                    for n in self.prerank.tower.input_names}, candidates)
        for r, (positions, kept) in zip(rows, candidates):
            out[r] = {"items": [dict(self.items[self.item_ids[i]]) for i in positions[:ks[r]]],
                      "scores": kept[:ks[r]], "version": self.version, "reranked": self.prerank is not None,
                      "query_vector": "tower" if resolved[r].precomputed is None else "precomputed"}
            if self.prerank is not None:
                out[r]["candidates"] = len(positions)
            if resolved[r].history is not None:
                out[r]["history"] = dict(resolved[r].history)
        return out

class PreRanker:
    """A version's cascade stage (``prerank/``): its query tower and the catalog's precomputed item
    vectors in index order, float32 [N, M * d]."""

    def __init__(self, tower: Tower, item_vectors: np.ndarray, shape: InteractionShape, top_n: int):
        self.tower = tower
        self.item_vectors = item_vectors
        self.shape = shape
        self.top_n = int(top_n)

    @classmethod
    def load(cls, version: str, folder: str, section: dict, item_ids: list[str], query_tower: Tower) -> "PreRanker":
        """ValueError naming the file when the pre-ranker's files disagree with the index or the
        query tower (another width, an indexed item without a vector, other inputs)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        shape = InteractionShape.from_dict(section)
        tower = Tower(storage.join(folder, names.prerank_path(QUERY_TOWER)))
        if tower.input_names != query_tower.input_names:
            raise ValueError(f"version {version}: the pre-ranker's query tower takes {tower.input_names}, "
                             f"the query tower {query_tower.input_names}")
        path = names.prerank_path(names.ITEM_EMBEDDINGS_FILE)
        table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(folder, path))))
        row_of = {str(i): n for n, i in enumerate(table.column("item_id").to_pylist())}
        missing = [i for i in item_ids if i not in row_of]
        if missing:
            raise ValueError(f"version {version}: {len(missing)} indexed items have no row in {path}, "
                             f"e.g. {missing[:3]}")
        flat = table.column("embedding").combine_chunks()
        width = len(flat[0]) if len(flat) else 0
        if width != shape.item_width:
            raise ValueError(f"version {version}: {path} holds {width}-wide vectors, the manifest's "
                             f"cascade needs {shape.item_width}")
        matrix = np.asarray(flat.flatten(), dtype=np.float32).reshape(len(flat), width)
        return cls(tower, matrix[np.array([row_of[i] for i in item_ids], dtype=np.int64)], shape,
                   section["top_n"])

    def rerank_lists(self, columns: dict, candidates: list[tuple[list[int], list[float]]]
                     ) -> list[tuple[list[int], list[float]]]:
        """Each request's (index positions, retrieval scores) -> (positions, pre-ranker scores), best
        first: one query-tower call for the batch, then each list re-scored on its own (lengths differ).
        The index's scores are the retrieval term of the score (exact after ScaNN's reordering)."""
        vectors = self.tower.embed(columns)
        out = []
        for vector, (positions, retrieval_scores) in zip(vectors, candidates):
            if not positions:
                out.append(([], []))
                continue
            order, scores = rerank(vector[None, :], self.item_vectors, np.asarray([positions]), self.shape,
                                   np.asarray([retrieval_scores], dtype=np.float32))
            out.append(([int(i) for i in order[0]], [float(x) for x in scores[0]]))
        return out


def check_counts(version: str, searcher, item_ids: list[str], items: dict, tower: Tower, serving: dict) -> None:
    """ValueError naming the file whose count disagrees with what serving relies on.

    Checked: the index holds one point per line of item_ids.txt (a shorter id list would
    answer large-k requests with an IndexError), every indexed id has an items.parquet row,
    ids are unique, and every tower input is a query feature the manifest types.
    """
    n_index = int(searcher.size())
    if n_index != len(item_ids):
        raise ValueError(f"version {version}: {ITEM_IDS} has {len(item_ids)} ids but the index holds "
                         f"{n_index} points")
    if not item_ids:
        raise ValueError(f"version {version}: {ITEM_IDS} is empty")
    if len(set(item_ids)) != len(item_ids):
        raise ValueError(f"version {version}: {ITEM_IDS} repeats ids ({len(item_ids) - len(set(item_ids))} repeats)")
    missing = [i for i in item_ids if i not in items]
    if missing:
        raise ValueError(f"version {version}: {len(missing)} indexed items absent from {ITEMS}, e.g. {missing[:3]}")
    declared = {f["name"] for f in serving.get("query_features", [])}
    untyped = [n for n in tower.input_names if n not in declared]
    if untyped:
        raise ValueError(f"version {version}: the query tower takes {untyped}, which the manifest's query "
                         f"features {sorted(declared)} do not declare")
