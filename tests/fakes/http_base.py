"""Plumbing shared by the fake HTTP services in this folder (KFP, Vertex AI, GCS).

- :class:`FakeServer`: start/stop on 127.0.0.1 and a port the OS picks, on a background
  thread; a context manager; ``url``.
- :class:`FakeHandler`: an HTTP/1.1 handler base that keeps test output clean and reads a
  Content-Length body.
- :class:`JsonApiHandler` + :class:`RecordedRequest`: a JSON REST API that records every
  request; a fake supplies only its auth rule, its error body and its routes.

Each fake keeps its own semantics (routes, checks, error formats); only the wiring is here.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any = None


class FakeHandler(BaseHTTPRequestHandler):
    """Handler base: keep-alive HTTP/1.1, no access log, ``fake`` set by :meth:`FakeServer.start`."""

    protocol_version = "HTTP/1.1"
    fake: Any  # the FakeServer this handler answers for

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _read_sized_body(self) -> bytes:
        """The body announced by Content-Length (none announced: empty)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class FakeServer:
    """Start/stop a fake on 127.0.0.1 (port chosen by the OS); ``with Fake(...) as f: f.url``.

    A subclass's ``start()`` calls :meth:`_start` with its handler class; it may set
    ``server_class``, ``thread_name`` and ``poll_interval`` (how soon ``stop()`` is noticed).
    """

    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    thread_name: Optional[str] = None
    poll_interval = 0.5  # serve_forever's default
    _httpd: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None

    def start(self):
        raise NotImplementedError

    def _start(self, handler_class: type[FakeHandler]):
        """Serve ``handler_class`` on a background thread; returns self."""
        # A subclass per start, so each handler reaches its own fake as ``self.fake``.
        handler = type("Handler", (handler_class,), {"fake": self})
        self._httpd = self.server_class(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name,
                                        kwargs={"poll_interval": self.poll_interval}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"


class JsonApiFake(FakeServer):
    """A fake REST API: bearer ``token`` (None: any), list pages capped at ``max_page_size``,
    every request recorded in ``requests``; ``_lock`` guards the fake's state.
    """

    def __init__(self, token: Optional[str], max_page_size: int) -> None:
        self.token = token
        self.max_page_size = max_page_size
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def _route(self, routes: list, method: str, path: str, query: dict, body: Any, not_found: Exception):
        """Call ``fn(query, body, *groups)`` of the first ``(method, path regex, fn)`` route that
        matches, holding ``_lock``; raise ``not_found`` when none does."""
        for route_method, pattern, fn in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                with self._lock:
                    return fn(query, body, *match.groups())
        raise not_found

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path matches ``path_regex`` entirely."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)]


class JsonApiHandler(FakeHandler):
    """GET/POST/DELETE with JSON bodies: parse, record on ``fake``, answer with :meth:`_answer`.

    A body that is not JSON is passed on as text with ``bad_json=True``, so each fake refuses
    it in its own error format (after its auth check, as the real services order them).
    """

    fake: JsonApiFake
    json_content_type = "application/json"

    def _answer(self, path: str, query: dict, body: Any, bad_json: bool) -> tuple[int, dict]:
        """(status, JSON document) for one request; errors are answered here too."""
        raise NotImplementedError

    def _serve(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        raw = self._read_sized_body()
        try:
            body = json.loads(raw) if raw else None
            bad_json = False
        except ValueError:
            body, bad_json = raw.decode("utf-8", "replace"), True
        with self.fake._lock:
            self.fake.requests.append(RecordedRequest(self.command, parsed.path, query,
                                                      {k.lower(): v for k, v in self.headers.items()}, body))
        status, answer = self._answer(parsed.path, query, body, bad_json)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.json_content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve
