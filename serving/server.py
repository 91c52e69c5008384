"""The query service: HTTP/JSON in front of the live :class:`serving.retriever.Retriever`.

Endpoints (JSON in, JSON out; every error body is ``{"error": "<reason>"}``)::

    POST /v1/retrieve   {"user_id": ...} | {"query": "..."} | {"features": {...}}
                        + optional "k" (int, default 10, 1..max_k) and "exclude_seen" (bool, default false)
                        -> 200 {"items": [{"item_id", display...}], "scores": [...], "version": "..."}
    GET  /healthz       200 while the process is up (liveness; says nothing about models)
    GET  /readyz        200 {"ready": true, "version", "loaded_at", "problem", ...} once a version is
                        loaded and warmed; 503 {"ready": false, "error": why} before that or while
                        stopping. "problem" is what the latest poll found wrong with the store
                        (CURRENT unreadable or missing, a version that failed to load, the live
                        folder deleted), None when nothing is: current state only, bounded in size
    GET  /v1/version    200 live version, when it was loaded, and the last reload attempt

Every request's Host must be a name the service answers to (403 otherwise; see
:class:`serving.http.HostPolicy` and ``--allow-host``).
Status codes: 400 malformed body / wrong types / unknown fields / k out of bounds,
404 unknown path or unknown query key, 405 wrong method, 408 body shorter than its
Content-Length (after the idle timeout), 411 no Content-Length (or chunked), 413 body over
``max_body_bytes`` (judged from Content-Length, before reading), 415 not application/json,
503 nothing loaded yet or shutting down.
A genuine internal error is a 500 with a generic message; the traceback goes to the log.

Hot reload: a background thread reads ``<store>/CURRENT`` every ``poll_seconds``. When it
names a version other than the live one, the thread loads it (checksums verified by
``Retriever.load``), warms it with one real retrieval, and only then swaps the live
reference under a lock. Each request takes the reference once at its start, so it is
answered entirely by one version and names that version. A version that fails to load or
warm is logged, reported as ``last_reload_error`` (the old version keeps serving and the
service stays ready), and remembered together with CURRENT's generation so the same
broken pointer is not reloaded on every poll; rewriting CURRENT (a new generation) or
``retry_failed_seconds`` passing (for transient causes such as a network error) makes
the thread try again.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from typing import Callable, Optional

from core import storage
from core.store import MANIFEST, VersionStore
from serving.http import Handler, HostPolicy, HttpError, Server, bounded, parse_json_object, run_until_stopped
from serving.batching import Coalescer
from serving.retriever import HISTORY, MAX_K, SELECTORS, RequestError, Retriever, UnknownKeyError

log = logging.getLogger("twotower.serve")

DEFAULT_K = 10
MAX_BODY_BYTES = 64 * 1024
REQUEST_FIELDS = SELECTORS + (HISTORY, "k", "exclude_seen")
RETRIEVE_PATH = "/v1/retrieve"
GET_PATHS = ("/healthz", "/readyz", "/v1/version")


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_retrieve_body(raw: bytes, max_k: int) -> tuple[dict, int, bool]:
    """Body bytes -> (retriever request, k, exclude_seen); HttpError(400) naming the problem."""
    body = parse_json_object(raw)
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise HttpError(400, f"unknown request field(s) {unknown}; allowed: {list(REQUEST_FIELDS)}")
    k = body.pop("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise HttpError(400, f"k must be an integer in 1..{max_k}, got {k!r}")
    exclude_seen = body.pop("exclude_seen", False)
    if not isinstance(exclude_seen, bool):
        raise HttpError(400, f"exclude_seen must be true or false, got {exclude_seen!r}")
    chosen = [s for s in SELECTORS if s in body]
    if len(chosen) > 1 or (not chosen and HISTORY not in body):
        raise HttpError(400, f"a request needs exactly one of {list(SELECTORS)} (or a {HISTORY!r} alone, "
                             f"for a model with a history feature), got {chosen or 'none'}")
    return body, k, exclude_seen


def warm(retriever: Retriever) -> dict:
    """One real retrieval through the query tower and the index; raises if the answer is unusable.

    Uses the first row of the version's query table (so real feature values reach the
    tower), filling absent values with "" / 0.0. Returns the answer.
    """
    row = next(iter(retriever.query_table.values()), {})
    features = {}
    for name in retriever.tower.input_names:
        value = row.get(name)
        if name == retriever.history_name:
            features[name] = value if isinstance(value, list) else []
            continue
        if retriever.feature_types.get(name) == "embedding":  # null: the zero vector
            features[name] = value if isinstance(value, list) else None
            continue
        numeric = retriever.feature_types.get(name) == "numeric"
        if value is None or (numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value))):
            value = 0.0 if numeric else ""
        features[name] = value
    k = max(1, min(DEFAULT_K, len(retriever.item_ids)))
    answer = retriever.retrieve({"features": features}, k=k)
    if not answer["items"]:
        raise RuntimeError(f"version {retriever.version}: warm-up retrieval returned no items")
    bad = [s for s in answer["scores"] if not math.isfinite(s)]
    if bad:
        raise RuntimeError(f"version {retriever.version}: warm-up retrieval returned non-finite scores {bad[:3]}")
    return answer


class QueryService:
    """The HTTP query service with hot reload; usable in-process (tests) or via :func:`serve`.

    ``start()`` binds (port 0 = any free port) and returns the bound port; the first
    load happens on the reload thread right away, so /healthz answers while a large
    version is still loading. ``stop()`` stops polling, stops accepting, and waits for
    in-flight requests (up to ``drain_seconds``).
    """

    def __init__(self, store: str, host: str = "127.0.0.1", port: int = 8080, poll_seconds: float = 5.0,
                 max_k: int = MAX_K, max_body_bytes: int = MAX_BODY_BYTES, retry_failed_seconds: float = 300.0,
                 drain_seconds: float = 30.0, loader: Optional[Callable[[str, str, Optional[str]], Retriever]] = None,
                 allow_hosts=(), max_connections: int = 256, max_batch: int = 64, rerank: bool = True,
                 query_vectors: bool = True):
        if not store:
            raise ValueError("QueryService: store must be a folder or gs:// prefix")
        if isinstance(max_k, bool) or not isinstance(max_k, int) or not 1 <= max_k <= MAX_K:
            raise ValueError(f"max_k must be an integer in 1..{MAX_K} (the retriever's limit), got {max_k!r}")
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.store = store
        self.host = host
        self.port = port
        self.poll_seconds = float(poll_seconds)
        self.max_k = max_k
        self.max_body_bytes = int(max_body_bytes)
        self.retry_failed_seconds = float(retry_failed_seconds)
        self.drain_seconds = float(drain_seconds)
        self.host_policy = HostPolicy(host, allow_hosts)  # DNS rebinding: see serving/http.py
        self.max_connections = int(max_connections)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch  # 1: every request makes its own tower call
        self._coalescer: Optional[Coalescer] = None
        # rerank: each version's cascade pre-ranker re-scores its top-N when it has one;
        # query_vectors: a request by key alone is answered from the version's precomputed vector.
        self._loader = loader or (lambda s, v, cache: Retriever.load(s, version=v, cache_dir=cache, rerank=rerank,
                                                                     query_vectors=query_vectors))
        self._versions = VersionStore(store)
        # Only a gs:// store downloads; a local one is served in place.
        self._cache_root = tempfile.mkdtemp(prefix="twotower-serve-") if storage.is_gcs(store) else None

        self._reload_lock = threading.Lock()  # one load at a time
        self._lock = threading.Lock()  # guards the fields below
        self._live: Optional[Retriever] = None
        self._loaded_at: Optional[str] = None
        self._last_attempt: Optional[dict] = None  # {"version", "at", "ok", "error", "seconds"}
        self._last_reload_error: Optional[str] = None
        self._failed: Optional[tuple] = None  # (version, CURRENT generation, monotonic time, error)
        self._no_version_reason: str = "no version loaded yet (first poll of the store has not finished)"
        self._last_poll_error: Optional[str] = None
        self._problem: Optional[str] = None  # what the latest poll found wrong (see status())
        self.reload_attempts = 0
        self.swaps = 0

        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._stop_event = threading.Event()
        self._stopping = False
        self._httpd: Optional[Server] = None
        self._threads: list[threading.Thread] = []

    # -- the live version -------------------------------------------------------------------
    def live(self) -> Optional[Retriever]:
        """The Retriever serving now (None before the first successful load)."""
        with self._lock:
            return self._live

    def status(self) -> dict:
        """What /readyz and /v1/version report: the state seen by the latest poll only.

        ``problem`` is what is wrong with the store right now (CURRENT unreadable, missing,
        or naming a version that failed to load; the live version's folder deleted), None
        when nothing is; it is recomputed on every poll, so a recovered store shows none.
        Every message is bounded in length whatever the store holds.
        """
        with self._lock:
            live = self._live
            return {
                "ready": live is not None and not self._stopping,
                "version": live.version if live else None,
                "loaded_at": self._loaded_at,
                "store": self.store,
                "problem": self._problem,
                "last_reload": dict(self._last_attempt) if self._last_attempt else None,
                "last_reload_error": self._last_reload_error,
                "last_poll_error": self._last_poll_error,
                "reason": None if live else self._no_version_reason,
            }

    def poll_once(self) -> bool:
        """Read CURRENT once; load, warm and swap when it names a new version. True if swapped.

        Never raises: failures are logged and recorded in :meth:`status`. Calls are
        serialised (the reload thread and a test calling it directly never overlap).
        """
        with self._reload_lock:
            return self._poll_once()

    def _observe(self, problem: Optional[str], poll_error: Optional[str] = None,
                 reload_error: Optional[str] = None, no_version: Optional[str] = None) -> None:
        """Record what this poll saw, replacing what earlier polls saw."""
        with self._lock:
            self._problem = bounded(problem) if problem else None
            self._last_poll_error = bounded(poll_error) if poll_error else None
            self._last_reload_error = bounded(reload_error) if reload_error else None
            if self._live is None and no_version:
                self._no_version_reason = bounded(no_version)

    def _poll_once(self) -> bool:
        try:
            target, generation = self._versions.read_current()  # one write of CURRENT: id and generation agree
        except Exception as exc:  # storage down, permissions, a damaged CURRENT: keep serving what we have
            msg = f"reading {self._versions.current_path} failed: {type(exc).__name__}: {exc}"
            log.warning("%s", bounded(msg))
            self._observe(msg, poll_error=msg, no_version=f"no version loaded: {msg}")
            return False
        live = self.live()
        if target is None:
            msg = f"store {self.store} has no live version (no CURRENT)"
            self._observe(msg if live is not None else None, no_version=f"{msg}; publish one")
            return False
        if live is not None and live.version == target:
            # CURRENT names what we serve (again, e.g. after a rollback): earlier failures no
            # longer describe the store; whether its folder is still there does.
            with self._lock:
                self._failed = None
                if self._last_attempt and self._last_attempt["version"] != live.version:
                    self._last_attempt = None  # an attempt at a version CURRENT no longer names: history
            self._observe(self._live_folder_problem(live.version))
            return False
        with self._lock:
            failed = self._failed
        if failed is not None and failed[:2] == (target, generation) \
                and time.monotonic() - failed[2] < self.retry_failed_seconds:
            # The same broken pointer: not reloaded on every poll, but still what is wrong now.
            self._observe(f"CURRENT names {bounded(target, 200)}, which failed to load: {failed[3]}",
                          reload_error=failed[3])
            return False
        return self._load_and_swap(target, generation)

    def _live_folder_problem(self, version: str) -> Optional[str]:
        """Why the live version's folder in the store is no longer complete, or None."""
        try:
            complete = storage.exists(storage.join(self._versions.version_path(version), MANIFEST))
        except Exception as exc:  # a listing failure is itself worth reporting
            return f"checking version {version} in {self.store} failed: {type(exc).__name__}: {exc}"
        if complete:
            return None
        return (f"version {version} (serving from memory) is no longer complete in {self.store}: "
                "its folder or manifest was deleted")

    def _load_and_swap(self, version: str, generation) -> bool:
        started = time.monotonic()
        attempt = {"version": bounded(version, 200), "at": _now_iso()}
        self.reload_attempts += 1
        log.info("loading version %s from %s", bounded(version, 200), self.store)
        retriever = None
        try:
            retriever = self._loader(self.store, version, self._cache_root)
            if retriever.version != version:
                raise RuntimeError(f"asked for version {version}, loaded {retriever.version}")
            warm(retriever)
        except Exception as exc:  # any load/verify/warm failure: keep the old version serving
            error = bounded(f"version {version}: {type(exc).__name__}: {exc}")
            current = self.live()
            log.error("reload failed, still serving %s: %s",
                      current.version if current else "no version", error, exc_info=True)
            attempt.update(ok=False, error=bounded(error), seconds=round(time.monotonic() - started, 3))
            with self._lock:
                self._last_attempt = attempt
                self._failed = (version, generation, time.monotonic(), error)
            self._observe(f"CURRENT names {bounded(version, 200)}, which failed to load: {error}", reload_error=error,
                          no_version=f"no version loaded: {error}")
            if retriever is not None:
                self._drop_cache(retriever, keep=None)
            elif self._cache_root:
                shutil.rmtree(os.path.join(self._cache_root, version), ignore_errors=True)
            return False
        attempt.update(ok=True, error=None, seconds=round(time.monotonic() - started, 3))
        with self._lock:
            old = self._live
            self._live = retriever  # the swap: one reference assignment
            self._loaded_at = _now_iso()
            self._last_attempt = attempt
            self._last_reload_error = None
            self._problem = None
            self._failed = None
            self.swaps += 1
        log.info("now serving version %s (was %s; load+warm %.2fs)", version, old.version if old else None,
                 attempt["seconds"])
        if old is not None:
            self._drop_cache(old, keep=retriever)
        return True

    def _drop_cache(self, retriever: Retriever, keep: Optional[Retriever]) -> None:
        """Delete a downloaded (gs://) version folder that no longer serves.

        Safe for requests still holding the old Retriever: its tower, index and tables
        are in memory once loaded.
        """
        if not self._cache_root or not retriever.folder.startswith(self._cache_root):
            return
        if keep is not None and os.path.abspath(keep.folder) == os.path.abspath(retriever.folder):
            return
        shutil.rmtree(retriever.folder, ignore_errors=True)

    def _poll_loop(self) -> None:
        self.poll_once()
        while not self._stop_event.wait(self.poll_seconds):
            self.poll_once()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> int:
        """Bind, start serving and polling; returns the bound port."""
        if self._httpd is not None:
            raise RuntimeError("QueryService already started")
        self._httpd = Server((self.host, self.port), _Handler, self, max_connections=self.max_connections,
                             host_policy=self.host_policy)
        if self.max_batch > 1:
            self._coalescer = Coalescer(self.max_batch)
        self.port = self._httpd.server_address[1]
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="twotower-http", daemon=True),
            threading.Thread(target=self._poll_loop, name="twotower-reload", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("query service on http://%s:%d (store %s, poll every %.1fs)", self.host, self.port,
                 self.store, self.poll_seconds)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 30.0, version: Optional[str] = None) -> dict:
        """Block until ready (and serving ``version`` when given); returns status. TimeoutError else."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["ready"] and (version is None or st["version"] == version):
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"service not ready with version {version or '(any)'} after {timeout}s: {st}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop polling, stop accepting, finish in-flight requests (up to drain_seconds)."""
        if self._httpd is None:
            return
        with self._lock:
            self._stopping = True
        self._stop_event.set()
        self._httpd.shutdown()  # returns once serve_forever has left its loop: no new connections
        deadline = time.monotonic() + self.drain_seconds
        with self._inflight_cv:
            while self._inflight and time.monotonic() < deadline:
                self._inflight_cv.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = self._inflight
        if left:
            log.warning("stopping with %d request(s) still in flight after %.0fs", left, self.drain_seconds)
        self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=max(1.0, self.poll_seconds + 1.0) if t.name == "twotower-reload" else 5.0)
        self._httpd = None
        if self._cache_root:
            shutil.rmtree(self._cache_root, ignore_errors=True)
        log.info("query service stopped")

    def __enter__(self) -> "QueryService":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------------
    def _enter(self) -> bool:
        with self._inflight_cv:
            if self._stopping:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._inflight_cv:
            self._inflight -= 1
            self._inflight_cv.notify_all()

    def handle_get(self, path: str) -> tuple[int, dict]:
        if path == "/healthz":
            return 200, {"status": "ok"}
        st = self.status()
        if path == "/readyz":
            if st["ready"]:
                return 200, {k: st[k] for k in ("ready", "version", "loaded_at", "problem", "last_reload_error",
                                                 "last_reload")}
            reason = "shutting down" if self._stopping else st["reason"]
            return 503, {"ready": False, "error": reason, "problem": st["problem"],
                         "last_reload_error": st["last_reload_error"], "last_reload": st["last_reload"]}
        return 200, st  # /v1/version

    def handle_retrieve(self, raw: bytes) -> tuple[int, dict]:
        request, k, exclude_seen = parse_retrieve_body(raw, self.max_k)
        retriever = self.live()  # one reference for the whole request: never mixes versions
        if retriever is None:
            raise HttpError(503, f"not ready: {self.status()['reason']}")
        try:
            resolved = retriever.resolve(request)  # validated here, on the request's own thread
        except UnknownKeyError as exc:
            raise HttpError(404, str(exc)) from None
        except RequestError as exc:
            raise HttpError(400, str(exc)) from None
        coalescer = self._coalescer
        if coalescer is not None:  # shares one tower call and one search with concurrent requests
            answer = coalescer.submit(retriever, resolved, k, exclude_seen)
        else:
            answer = retriever.answer_resolved([resolved], [k], [exclude_seen])[0]
        if isinstance(answer, RequestError):
            raise HttpError(400, str(answer))
        return 200, answer


class _Handler(Handler):
    """Routes the service's endpoints; body limits and error answers as in the module doc."""

    access_log = log

    @property
    def service(self) -> QueryService:
        return self.server.app  # type: ignore[attr-defined]

    def _send(self, status: int, body: dict, headers: Optional[dict] = None) -> None:
        self._send_body(status, json.dumps(body).encode("utf-8"), "application/json", headers)

    def _dispatch(self, method: str) -> None:
        service = self.service
        self._body_consumed = False
        if not service._enter():
            self.close_connection = True
            self._send(503, {"error": "shutting down"})
            return
        try:
            try:
                status, body, headers = self._route(method)
            except HttpError as exc:
                status, body, headers = exc.status, {"error": str(exc)}, exc.headers
            except Exception:  # a bug or a broken version: generic answer, details in the log
                log.exception("internal error on %s %s", method, self.path)
                status, body, headers = 500, {"error": "internal error"}, {}
            if self._has_unread_body():  # too large, wrong type, wrong path: never read
                self.close_connection = True
            try:
                self._send(status, body, headers)
            except OSError as exc:  # client went away (broken pipe, reset, timeout)
                self.close_connection = True
                log.debug("could not answer %s %s: %s", method, self.path, exc)
        finally:
            service._leave()  # only once the answer is written: stop() drains whole exchanges

    def _route(self, method: str) -> tuple[int, dict, dict]:
        self._check_host()
        path = self.path.split("?", 1)[0]
        if path == RETRIEVE_PATH:
            if method != "POST":
                raise HttpError(405, f"{method} not allowed on {path}; use POST", {"Allow": "POST"})
            status, body = self.service.handle_retrieve(self._read_body("application/json",
                                                                        self.service.max_body_bytes))
            return status, body, {}
        if path in GET_PATHS:
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"{method} not allowed on {path}; use GET", {"Allow": "GET, HEAD"})
            status, body = self.service.handle_get(path)
            return status, body, {}
        raise HttpError(404, f"no such endpoint {path}; see POST {RETRIEVE_PATH}, GET {', '.join(GET_PATHS)}")


def serve(store: str, host: str = "127.0.0.1", port: int = 8080, poll_seconds: float = 5.0,
          max_k: int = MAX_K, on_started: Optional[Callable[[QueryService], None]] = None,
          stop_event: Optional[threading.Event] = None, **kwargs) -> int:
    """Run the query service until SIGTERM / SIGINT (or ``stop_event``); returns 0.

    Signal handlers are installed only when called from the main thread; elsewhere pass
    ``stop_event``. Shutdown stops polling, refuses new requests and drains in-flight ones.
    """
    service = QueryService(store, host=host, port=port, poll_seconds=poll_seconds, max_k=max_k, **kwargs)

    def _start() -> None:
        service.start()
        if on_started is not None:
            on_started(service)

    run_until_stopped(_start, service.stop, stop_event=stop_event, logger=log)
    return 0
