"""A small fake of the GCS JSON API that enforces generation preconditions.

The PyPI emulator ignores ``ifGenerationMatch``, which makes compare-and-swap tests pass
whatever the code does. This fake implements only what google-cloud-storage 3.x sends for
the calls :mod:`core.storage` makes, but implements it the way the real service behaves:

- objects: ``GET/DELETE /storage/v1/b/{bucket}/o/{object}`` (names URL-encoded, ``/`` as
  ``%2F``); media via ``?alt=media`` on that URL or ``/download/storage/v1/...``, with
  ``Range`` (206), ``x-goog-generation``, ``x-goog-hash`` (crc32c + md5) and
  ``x-goog-stored-content-length`` so the client's integrity checks and resumed reads work;
- list: ``GET /storage/v1/b/{bucket}/o`` with ``prefix``, ``delimiter`` (-> ``prefixes``),
  ``maxResults`` (items and prefixes both count, as on the real service), ``pageToken``;
- uploads: ``POST /upload/storage/v1/b/{bucket}/o?uploadType=multipart`` (multipart/related,
  the JSON part's ``crc32c``/``md5Hash`` are checked -> 400 on mismatch) and
  ``uploadType=resumable`` (session URI in ``Location``; ``PUT`` chunks with
  ``Content-Range: bytes a-b/total|*``, ``308`` + ``Range`` until the last chunk,
  ``bytes */total`` status queries, ``x-goog-hash`` on the last chunk checked);
- buckets: ``GET /storage/v1/b/{bucket}`` (404 unless :meth:`FakeGcsServer.create_bucket`).

Every write gets a fresh, strictly increasing ``generation`` (microsecond-clock like the real
service) and ``metageneration`` 1; there is no object versioning, so an old generation is gone
(404) once replaced. Preconditions ``ifGenerationMatch`` (0 = must not exist),
``ifGenerationNotMatch``, ``ifMetagenerationMatch`` and ``ifMetagenerationNotMatch`` are enforced
on uploads (checked when the upload is committed: multipart request / last resumable chunk),
on reads (metadata and media) and on delete. A failed precondition answers 412 with the real
service's JSON error body (``reason: conditionNotMet``); the ``...NotMatch`` ones on a read
answer 304 like the real service; a missing object or bucket 404.

Fault injection (thread-safe; ``match(method, path)`` gets the raw request path incl. query):

- :meth:`fail_next` answer the next ``n`` matching requests with ``status`` (default 503)
  and do nothing (or, with ``after_commit=True``, apply the request and *then* answer the
  error: a lost response, the ambiguous case a retried conditional write must survive);
- :meth:`delay_next` sleep before handling (or after committing) the next ``n`` matches;
- :meth:`truncate_next_download` send the full ``Content-Length`` but only ``nbytes`` of the
  body, then close the connection.

Use::

    with FakeGcsServer(buckets=["b"]) as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Callable, Optional

import google_crc32c

from tests.fakes.http_base import FakeHandler, FakeServer

Match = Optional[Callable[[str, str], bool]]


def crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


@dataclass
class StoredObject:
    bucket: str
    name: str
    data: bytes
    generation: int
    metageneration: int = 1
    content_type: str = "application/octet-stream"
    metadata: dict = field(default_factory=dict)
    md5: str = ""
    crc32c: str = ""
    updated: float = field(default_factory=time.time)

    def resource(self, base_url: str) -> dict:
        quoted = urllib.parse.quote(self.name, safe="")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.updated))
        out = {
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "selfLink": f"{base_url}/storage/v1/b/{self.bucket}/o/{quoted}",
            "mediaLink": f"{base_url}/download/storage/v1/b/{self.bucket}/o/{quoted}"
                         f"?generation={self.generation}&alt=media",
            "name": self.name,
            "bucket": self.bucket,
            "generation": str(self.generation),
            "metageneration": str(self.metageneration),
            "contentType": self.content_type,
            "storageClass": "STANDARD",
            "size": str(len(self.data)),
            "md5Hash": self.md5,
            "crc32c": self.crc32c,
            "etag": base64.b64encode(f"{self.generation}/{self.metageneration}".encode()).decode(),
            "timeCreated": stamp,
            "updated": stamp,
        }
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


@dataclass
class _Rule:
    kind: str  # fail | delay | truncate
    remaining: int
    match: Match
    status: int = 503
    seconds: float = 0.0
    nbytes: int = 0
    after_commit: bool = False


@dataclass
class _Session:
    bucket: str
    name: str
    metadata: dict
    content_type: str
    preconditions: dict
    buffer: bytearray = field(default_factory=bytearray)
    done: Optional[dict] = None  # the final resource once committed


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str = "invalid", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client hung up (a timeout test, or a truncated download): expected
        super().handle_error(request, client_address)


class FakeGcsServer(FakeServer):
    """A threaded fake GCS JSON API on 127.0.0.1 (port chosen by the OS). See the module doc."""

    server_class = _Server
    thread_name = "fake-gcs"
    poll_interval = 0.05

    def __init__(self, buckets: tuple[str, ...] | list[str] = ()):
        self._lock = threading.RLock()
        self._buckets: dict[str, dict[str, StoredObject]] = {b: {} for b in buckets}
        self._sessions: dict[str, _Session] = {}
        self._rules: list[_Rule] = []
        self._last_generation = 0
        self._session_ids = itertools.count(1)
        # (method, raw path, lower-cased headers) of every request, in arrival order
        self.requests: list[tuple[str, str, dict]] = []
        self.max_page = 1000  # the most entries one list page returns, whatever maxResults asks

    def start(self) -> "FakeGcsServer":
        return self._start(_Handler)

    # -- direct access for tests (bypass HTTP) ----------------------------------------------------
    def create_bucket(self, name: str) -> None:
        with self._lock:
            self._buckets.setdefault(name, {})

    def object_names(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(self._buckets[bucket])

    def get_object(self, bucket: str, name: str) -> Optional[StoredObject]:
        with self._lock:
            return self._buckets.get(bucket, {}).get(name)

    def put_object(self, bucket: str, name: str, data: bytes, *, keep_hashes: bool = False) -> StoredObject:
        """Write an object directly as a new generation (like another client overwriting it).

        ``keep_hashes=True`` instead replaces the bytes in place, keeping generation and the
        stored checksums: silent corruption (bit rot) that the client's checksum must catch.
        """
        with self._lock:
            objs = self._buckets[bucket]
            if keep_hashes:
                obj = objs[name]
                obj.data = bytes(data)
                return obj
            return self._commit(bucket, name, bytes(data), "application/octet-stream", {})

    # -- fault injection ---------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503, match: Match = None, *, after_commit: bool = False) -> None:
        with self._lock:
            self._rules.append(_Rule("fail", n, match, status=status, after_commit=after_commit))

    def delay_next(self, seconds: float, n: int = 1, match: Match = None, *, after_commit: bool = False) -> None:
        with self._lock:
            self._rules.append(_Rule("delay", n, match, seconds=seconds, after_commit=after_commit))

    def truncate_next_download(self, nbytes: int, n: int = 1, match: Match = None) -> None:
        with self._lock:
            self._rules.append(_Rule("truncate", n, match, nbytes=nbytes))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take(self, kind: str, method: str, path: str, *, after_commit: Optional[bool] = None) -> Optional[_Rule]:
        """Consume one use of the first armed rule of ``kind`` that matches this request."""
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or rule.remaining <= 0:
                    continue
                if after_commit is not None and rule.after_commit != after_commit:
                    continue
                if rule.match is not None and not rule.match(method, path):
                    continue
                rule.remaining -= 1
                self._rules = [r for r in self._rules if r.remaining > 0]
                return rule
        return None

    # -- object model --------------------------------------------------------------------------------
    def _next_generation(self) -> int:
        # Real generations are microsecond timestamps; keep that shape but never repeat.
        self._last_generation = max(self._last_generation + 1, time.time_ns() // 1000)
        return self._last_generation

    def _commit(self, bucket: str, name: str, data: bytes, content_type: str, metadata: dict) -> StoredObject:
        obj = StoredObject(bucket, name, data, self._next_generation(), 1, content_type or "application/octet-stream",
                           dict(metadata or {}), md5_b64(data), crc32c_b64(data))
        self._buckets[bucket][name] = obj
        return obj

    def _bucket(self, bucket: str) -> dict[str, StoredObject]:
        if bucket not in self._buckets:
            raise HttpError(404, f"The specified bucket does not exist: {bucket}", "notFound")
        return self._buckets[bucket]

    @staticmethod
    def _check(obj: Optional[StoredObject], pre: dict, *, read: bool) -> None:
        """Raise 412 (304 for a read's NotMatch) when a precondition does not hold."""
        gen = obj.generation if obj is not None else 0
        meta = obj.metageneration if obj is not None else None
        failed = HttpError(412, "At least one of the pre-conditions you specified did not hold.",
                           "conditionNotMet")
        if "ifGenerationMatch" in pre and int(pre["ifGenerationMatch"]) != gen:
            raise failed
        if "ifMetagenerationMatch" in pre and (meta is None or int(pre["ifMetagenerationMatch"]) != meta):
            raise failed
        not_modified = HttpError(304, "Not Modified", "notModified") if read else failed
        if "ifGenerationNotMatch" in pre and int(pre["ifGenerationNotMatch"]) == gen:
            raise not_modified
        if "ifMetagenerationNotMatch" in pre and meta is not None and int(pre["ifMetagenerationNotMatch"]) == meta:
            raise not_modified


_PRECONDITIONS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")
_ALIASES = {"ifMetaGenerationNotMatch": "ifMetagenerationNotMatch"}  # the client sends this spelling too
_OBJECT_RE = re.compile(r"^(?:/download)?/storage/v1/b/([^/]+)/o/(.+)$")
_LIST_RE = re.compile(r"^/storage/v1/b/([^/]+)/o/?$")
_BUCKET_RE = re.compile(r"^/storage/v1/b/([^/]+)/?$")
_UPLOAD_RE = re.compile(r"^/upload/storage/v1/b/([^/]+)/o/?$")


def _preconditions(query: dict) -> dict:
    out = {}
    for key, values in query.items():
        key = _ALIASES.get(key, key)
        if key in _PRECONDITIONS:
            out[key] = values[-1]
    return out


class _Handler(FakeHandler):
    disable_nagle_algorithm = True  # else every small reply waits out a delayed ACK (~40 ms)
    fake: FakeGcsServer  # set on the subclass made by FakeGcsServer.start

    # -- plumbing ----------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self._read_sized_body()

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json; charset=UTF-8",
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 304:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: dict, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"), headers=headers)

    def _error(self, err: HttpError) -> None:
        if err.status == 304:
            self._send(304, headers=err.headers)
            return
        self._json(err.status, {"error": {"code": err.status, "message": err.message,
                                          "errors": [{"message": err.message, "domain": "global",
                                                      "reason": err.reason}]}}, headers=err.headers)

    def _dispatch(self) -> None:
        fake = self.fake
        raw = self.path
        with fake._lock:
            fake.requests.append((self.command, raw, {k.lower(): v for k, v in self.headers.items()}))
        delay = fake._take("delay", self.command, raw, after_commit=False)
        if delay:
            time.sleep(delay.seconds)
        body = self._body()  # always drain the request so the connection stays usable
        fail = fake._take("fail", self.command, raw, after_commit=False)
        if fail:
            self._error(HttpError(fail.status, f"injected failure {fail.status}", "backendError"))
            return
        parsed = urllib.parse.urlsplit(raw)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        try:
            status, payload, headers = self._route(parsed.path, query, body)
        except HttpError as err:
            self._error(err)
            return
        late_delay = fake._take("delay", self.command, raw, after_commit=True)
        if late_delay:
            time.sleep(late_delay.seconds)
        late_fail = fake._take("fail", self.command, raw, after_commit=True)
        if late_fail:
            self._error(HttpError(late_fail.status, f"injected failure {late_fail.status} (after commit)",
                                  "backendError"))
            return
        if isinstance(payload, _Media):
            try:
                self._media(payload, headers)
            except HttpError as err:
                self._error(err)
        elif isinstance(payload, dict):
            self._json(status, payload, headers)
        else:
            self._send(status, payload or b"", headers=headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = lambda self: self._dispatch()

    # -- routing -------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict, body: bytes):
        fake = self.fake
        method = self.command
        m = _UPLOAD_RE.match(path)
        if m:
            bucket = urllib.parse.unquote(m.group(1))
            kind = query.get("uploadType", [""])[-1]
            if "upload_id" in query:
                if method not in ("PUT", "POST"):
                    raise HttpError(405, f"{method} not allowed on an upload session")
                return self._resumable_put(query["upload_id"][-1], body)
            if method != "POST":
                raise HttpError(405, f"{method} not allowed on uploads")
            if kind == "multipart":
                return self._multipart(bucket, query, body)
            if kind == "resumable":
                return self._resumable_start(bucket, query, body)
            if kind == "media":
                name = query.get("name", [""])[-1]
                return self._finish_upload(bucket, name, body, self.headers.get("Content-Type", ""), {},
                                           _preconditions(query), {})
            raise HttpError(400, f"unsupported uploadType {kind!r}")
        m = _OBJECT_RE.match(path)
        if m:
            bucket, name = urllib.parse.unquote(m.group(1)), urllib.parse.unquote(m.group(2))
            media = path.startswith("/download/") or query.get("alt", [""])[-1] == "media"
            with fake._lock:
                objs = fake._bucket(bucket)
                obj = objs.get(name)
                if obj is None or ("generation" in query and int(query["generation"][-1]) != obj.generation):
                    raise HttpError(404, f"No such object: {bucket}/{name}", "notFound")
                pre = _preconditions(query)
                if method in ("GET", "HEAD"):
                    fake._check(obj, pre, read=True)
                    if media:
                        return 200, _Media(obj, bytes(obj.data)), {}
                    return 200, obj.resource(fake.url), {}
                if method == "DELETE":
                    fake._check(obj, pre, read=False)
                    del objs[name]
                    return 204, b"", {}
            raise HttpError(405, f"{method} not supported on objects by the fake")
        m = _LIST_RE.match(path)
        if m and method == "GET":
            return self._list(urllib.parse.unquote(m.group(1)), query)
        m = _BUCKET_RE.match(path)
        if m and method == "GET":
            bucket = urllib.parse.unquote(m.group(1))
            with fake._lock:
                fake._bucket(bucket)
            return 200, {"kind": "storage#bucket", "id": bucket, "name": bucket, "location": "US",
                         "storageClass": "STANDARD", "metageneration": "1"}, {}
        raise HttpError(404, f"Not Found: {method} {path}", "notFound")

    def _list(self, bucket: str, query: dict):
        fake = self.fake
        prefix = query.get("prefix", [""])[-1]
        delimiter = query.get("delimiter", [""])[-1]
        max_results = min(int(query.get("maxResults", ["1000"])[-1] or 1000), fake.max_page)
        token = query.get("pageToken", [""])[-1]
        after = base64.urlsafe_b64decode(token.encode()).decode("utf-8") if token else None
        with fake._lock:
            objs = fake._bucket(bucket)
            entries: dict[str, Optional[StoredObject]] = {}  # key -> object (None = a prefix)
            for name in sorted(objs):
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    entries[prefix + rest[:rest.index(delimiter) + len(delimiter)]] = None
                else:
                    entries[name] = objs[name]
            keys = [k for k in sorted(entries) if after is None or k > after]
            page, more = keys[:max_results], len(keys) > max_results
            doc = {"kind": "storage#objects"}
            items = [entries[k].resource(fake.url) for k in page if entries[k] is not None]
            prefixes = [k for k in page if entries[k] is None]
            if items:
                doc["items"] = items
            if prefixes:
                doc["prefixes"] = prefixes
            if more:
                doc["nextPageToken"] = base64.urlsafe_b64encode(page[-1].encode("utf-8")).decode("ascii")
        return 200, doc, {}

    # -- uploads ---------------------------------------------------------------------------------------
    def _multipart(self, bucket: str, query: dict, body: bytes):
        ctype = self.headers.get("Content-Type", "")
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/related") or not m:
            raise HttpError(400, f"multipart upload needs a multipart/related body, got {ctype!r}")
        boundary = b"--" + m.group(1).encode("latin-1")
        parts = []
        for chunk in body.split(boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n"):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            parts.append((headers, content.removesuffix(b"\r\n")))
        if len(parts) != 2:
            raise HttpError(400, f"multipart upload needs 2 parts, got {len(parts)}")
        metadata = json.loads(parts[0][1].decode("utf-8"))
        data = parts[1][1]
        name = metadata.get("name") or query.get("name", [""])[-1]
        expected = {k: metadata[k] for k in ("crc32c", "md5Hash") if k in metadata}
        content_type = metadata.get("contentType") or parts[1][0].get("content-type", "")
        return self._finish_upload(bucket, name, data, content_type, metadata.get("metadata") or {},
                                   _preconditions(query), expected)

    def _finish_upload(self, bucket: str, name: str, data: bytes, content_type: str, user_meta: dict,
                       pre: dict, expected_hashes: dict):
        fake = self.fake
        if not name:
            raise HttpError(400, "Required: object name", "required")
        if "crc32c" in expected_hashes and expected_hashes["crc32c"] != crc32c_b64(data):
            raise HttpError(400, "Provided CRC32C \"%s\" doesn't match calculated CRC32C \"%s\"."
                            % (expected_hashes["crc32c"], crc32c_b64(data)))
        if "md5Hash" in expected_hashes and expected_hashes["md5Hash"] != md5_b64(data):
            raise HttpError(400, "Provided MD5 hash doesn't match calculated MD5 hash.")
        with fake._lock:
            objs = fake._bucket(bucket)
            fake._check(objs.get(name), pre, read=False)
            obj = fake._commit(bucket, name, data, content_type, user_meta)
            return 200, obj.resource(fake.url), {}

    def _resumable_start(self, bucket: str, query: dict, body: bytes):
        fake = self.fake
        metadata = json.loads(body.decode("utf-8")) if body else {}
        name = metadata.get("name") or query.get("name", [""])[-1]
        if not name:
            raise HttpError(400, "Required: object name", "required")
        pre = _preconditions(query)
        with fake._lock:
            # The real service checks preconditions when the session starts and again at commit.
            fake._check(fake._bucket(bucket).get(name), pre, read=False)
            upload_id = f"fake-{next(fake._session_ids)}"
            fake._sessions[upload_id] = _Session(
                bucket, name, metadata.get("metadata") or {},
                metadata.get("contentType") or self.headers.get("X-Upload-Content-Type", ""), pre)
        location = f"{fake.url}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o" \
                   f"?uploadType=resumable&upload_id={upload_id}"
        return 200, b"", {"Location": location}

    def _resumable_put(self, upload_id: str, body: bytes):
        fake = self.fake
        with fake._lock:
            session = fake._sessions.get(upload_id)
            if session is None:
                raise HttpError(404, f"No such upload session: {upload_id}", "notFound")
            if session.done is not None:
                return 200, session.done, {}
            crange = self.headers.get("Content-Range", "")
            m = re.match(r"^bytes (\*|(\d+)-(\d+))/(\*|\d+)$", crange.strip())
            if not m:
                raise HttpError(400, f"bad Content-Range {crange!r}")
            total = None if m.group(4) == "*" else int(m.group(4))
            if m.group(1) != "*":
                start, end = int(m.group(2)), int(m.group(3))
                if end - start + 1 != len(body):
                    raise HttpError(400, f"Content-Range {crange!r} does not match {len(body)} body bytes")
                have = len(session.buffer)
                if start > have:
                    raise HttpError(400, f"chunk starts at {start} but the session holds {have} bytes")
                session.buffer += body[have - start:]  # bytes already held are ignored, like GCS
            if total is not None and len(session.buffer) > total:
                raise HttpError(400, f"received {len(session.buffer)} bytes, more than the declared {total}")
            if total is None or len(session.buffer) < total:
                headers = {"Range": f"bytes=0-{len(session.buffer) - 1}"} if session.buffer else {}
                return 308, b"", headers
            expected = {}
            for item in self.headers.get("x-goog-hash", "").split(","):
                key, _, value = item.strip().partition("=")
                if key in ("crc32c", "md5") and value:
                    expected["crc32c" if key == "crc32c" else "md5Hash"] = value
            status, resource, headers = self._finish_upload(session.bucket, session.name, bytes(session.buffer),
                                                             session.content_type, session.metadata,
                                                             session.preconditions, expected)
            session.done = resource
            return status, resource, headers

    # -- media ---------------------------------------------------------------------------------------------
    def _media(self, media: "_Media", headers: dict) -> None:
        fake = self.fake
        data, obj = media.data, media.obj
        size = len(data)
        status = 200
        out = {"x-goog-generation": str(obj.generation), "x-goog-metageneration": str(obj.metageneration),
               "x-goog-hash": f"crc32c={obj.crc32c},md5={obj.md5}",
               "x-goog-stored-content-length": str(size), "x-goog-stored-content-encoding": "identity",
               "ETag": f'"{obj.md5}"', **headers}
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if not m:
                raise HttpError(400, f"bad Range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(size - int(m.group(2)), 0), size - 1
            if start >= size and size > 0:
                self._error(HttpError(416, "Request range not satisfiable", "requestedRangeNotSatisfiable"))
                return
            data = data[start:end + 1]
            out["Content-Range"] = f"bytes {start}-{end}/{size}"
            status = 206
        cut = fake._take("truncate", self.command, self.path)
        self.send_response(status)
        for key, value in out.items():
            self.send_header(key, value)
        self.send_header("Content-Type", obj.content_type)
        self.send_header("Content-Length", str(len(data)))
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut:
            self.wfile.write(data[:cut.nbytes])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@dataclass
class _Media:
    obj: StoredObject
    data: bytes
