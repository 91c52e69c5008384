"""The UI's HTTP server (stdlib ThreadingHTTPServer): pages, a small JSON API, and run files.

Pages (HTML)::

    GET  /                      runs, newest first
    GET  /runs/<run_id>         one run: steps, reports, files
    GET  /versions              versions in the store, live one marked
    POST /versions/rollback     form field "version"; 303 back to /versions with the outcome
    GET  /query?mode=&q=&k=&version=   the query box and its results
    GET  /files/<run_id>/<path> a file under the runs folder (never outside it)

JSON API (the pages' data; errors are ``{"error": "<reason>"}``)::

    GET  /api/runs              [run overview, ...]
    GET  /api/runs/<run_id>     run overview + steps
    GET  /api/versions          {"store", "live", "versions": [...]}
    POST /api/rollback          {"version": "..."} -> {"live": "..."}; 409 when refused
    POST /api/query             {"query": "..."} | {"user_id": "..."} + "k", "version" -> results
    GET  /healthz

Errors reach the browser as a message, never a traceback: expected failures (bad input,
refused rollback, unloadable version) carry their reason; anything else is logged with
its traceback and answered with a generic 500.

Cross-site defences (a page elsewhere must never move the live index of a store, which may
be a gs:// production one, nor read run files):

- every request's ``Host`` must be a name this server is bound under
  (:class:`serving.http.HostPolicy`): a DNS-rebound page arrives under its own name;
- every POST from a browser must carry an ``Origin`` naming this server: ``Origin: null``
  (a sandboxed iframe, a ``data:`` page) and a browser POST without one are refused;
- a state change (rollback) also needs the UI's token, as Jupyter's do: the form carries it
  as a hidden ``token`` field (a cross-site page cannot read our pages to learn it), API
  clients send ``X-Twotower-Token: <token>`` (or ``Authorization: token <token>``). The
  token is random per start unless ``--token`` is given; ``twotower ui`` prints it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import shutil
import threading
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from serving.http import Handler, HostPolicy, HttpError, Server, parse_json_object
from ui import page, runs, versions
from ui.query import QueryError, RetrieverCache

log = logging.getLogger("twotower.ui")

MAX_BODY_BYTES = 64 * 1024
TOKEN_HEADER = "X-Twotower-Token"
TOKEN_FIELD = "token"  # the rollback form's hidden field
# Fetch metadata a browser adds to every request: their presence marks a browser's POST,
# which must then name its Origin.
_BROWSER_HEADERS = ("Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")
# Types shown inline; everything else downloads. Logs, JSON and markdown read best as text.
TEXT_TYPES = {".log": "text/plain", ".txt": "text/plain", ".md": "text/plain", ".csv": "text/plain",
              ".jsonl": "text/plain", ".yaml": "text/plain", ".yml": "text/plain", ".pbtxt": "text/plain",
              ".json": "application/json", ".html": "text/html", ".htm": "text/html", ".svg": "image/svg+xml",
              ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".css": "text/css"}


class UIApp:
    """What the handlers call: reads runs and the store, rolls back, answers queries."""

    def __init__(self, runs_dir: str, store: str, max_versions: int = 3, token: Optional[str] = None):
        self.runs_dir = os.path.abspath(runs_dir)
        self.store = store
        #: What a state change must present (see the module doc); never empty.
        self.token = token or secrets.token_urlsafe(24)
        self.retrievers = RetrieverCache(store, max_versions=max_versions)
        # One rollback at a time from this UI; the store's CAS guards against other writers.
        self._rollback_lock = threading.Lock()

    # -- data ----------------------------------------------------------------------------------
    def run(self, run_id: str) -> dict:
        try:
            return runs.read_run(self.runs_dir, run_id)
        except runs.RunNotFoundError as exc:
            raise HttpError(404, str(exc)) from None

    def version_listing(self) -> dict:
        from core.store import StoreError

        try:
            return versions.list_versions(self.store)
        except StoreError as exc:
            raise HttpError(502, f"store {self.store} cannot be read: {exc}") from None

    def rollback(self, version) -> str:
        if not isinstance(version, str) or not version:
            raise HttpError(400, "name the version to roll back to")
        with self._rollback_lock:
            try:
                return versions.rollback(self.store, version)
            except versions.RollbackError as exc:
                raise HttpError(409, str(exc)) from None

    def query(self, text=None, user_id=None, k=10, version=None) -> dict:
        try:
            return self.retrievers.query(text=text, user_id=user_id, k=k, version=version or None)
        except QueryError as exc:
            raise HttpError(400, str(exc)) from None

    # -- pages ---------------------------------------------------------------------------------
    def versions_html(self, params: dict) -> str:
        known = {r["run_id"] for r in runs.list_runs(self.runs_dir)}
        return page.versions_page(self.version_listing(), known, ok=params.get("ok"), error=params.get("error"),
                                  token=self.token)

    def query_html(self, params: dict) -> tuple[int, str]:
        form = {"q": params.get("q", ""), "mode": params.get("mode", ""), "k": params.get("k", "10"),
                "version": params.get("version", "")}
        listing = self.version_listing()
        if not form["mode"]:
            # Default to what the live model can answer: free text only for a text query key.
            info = versions.version_info(self.store, None)
            form["mode"] = "user_id" if info and info["query_key_type"] not in (None, "text") else "text"
        if not form["q"].strip():
            return 200, page.query_page(listing, form)
        kwargs = {"user_id": form["q"]} if form["mode"] == "user_id" else {"text": form["q"]}
        try:
            answer = self.query(k=form["k"], version=form["version"], **kwargs)
        except HttpError as exc:
            return exc.status, page.query_page(listing, form, error=str(exc))
        return 200, page.query_page(listing, form, answer=answer)


class _Handler(Handler):
    """Routes the pages, the JSON API and run files; an HttpError's message reaches the user."""

    server_version = "twotower-ui"
    access_log = log
    # The UI's answers to broken bodies (the query service's differ; see serving/http.py).
    chunked_reason = "Content-Length header required"
    negative_length_invalid = False
    close_on_short_body = True

    @property
    def app(self) -> UIApp:
        return self.server.app  # type: ignore[attr-defined]

    # -- responses -----------------------------------------------------------------------------
    def _send_bytes(self, status: int, data: bytes, ctype: str, headers: Optional[dict] = None) -> None:
        # nosniff: the declared type is the one a browser uses; no-store: runs and the store change under us.
        self._send_body(status, data, ctype, {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                                              **(headers or {})})

    def _send_html(self, status: int, text: str, headers: Optional[dict] = None) -> None:
        self._send_bytes(status, text.encode("utf-8"), "text/html; charset=utf-8", headers)

    def _send_json(self, status: int, body, headers: Optional[dict] = None) -> None:
        self._send_bytes(status, json.dumps(body, default=str).encode("utf-8"), "application/json", headers)

    def _redirect(self, location: str) -> None:
        self._send_bytes(303, b"", "text/plain", {"Location": location})

    def _send_file(self, path: str) -> None:
        ext = os.path.splitext(path)[1].lower()
        ctype = TEXT_TYPES.get(ext) or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/json":
            ctype += "; charset=utf-8"
        headers = {
            # Files come from pipeline output: let them render, never run scripts. Same origin is
            # kept so the run page can size a report's iframe to its content.
            "Content-Security-Policy": "sandbox allow-same-origin",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        if ctype == "application/octet-stream":
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(os.path.basename(path))}"
        self._send_head(200, ctype, os.path.getsize(path), headers)
        if self.command != "HEAD":
            with open(path, "rb") as fh:  # streamed: pipeline.log can be large
                shutil.copyfileobj(fh, self.wfile, length=256 * 1024)

    # -- dispatch ------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        self._body_consumed = False
        url = urlsplit(self.path)
        path = unquote(url.path)
        is_api = path.startswith("/api/")
        try:
            self._route(method, path, url.query)
        except HttpError as exc:
            self._finish_error(exc.status, str(exc), exc.headers, is_api)
        except Exception:  # a bug: generic answer, the traceback goes to the log only
            log.exception("internal error on %s %s", method, self.path)
            self._finish_error(500, "internal error (details are in the server's log)", {}, is_api)

    def _finish_error(self, status: int, text: str, headers: dict, is_api: bool) -> None:
        if self._has_unread_body():  # chunked or sized, it would be taken for the next request
            self.close_connection = True
        try:
            if is_api:
                self._send_json(status, {"error": text}, headers)
            else:
                self._send_html(status, page.error_page(status, text), headers)
        except OSError:  # the client went away
            self.close_connection = True

    def _route(self, method: str, path: str, query: str) -> None:
        self._check_host()
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        app = self.app
        if method == "POST":
            self._check_origin()
            if path == "/versions/rollback":
                return self._rollback_form()
            if path == "/api/rollback":
                self._check_token(None)
                body = self._read_json()
                return self._send_json(200, {"live": app.rollback(body.get("version"))})
            if path == "/api/query":
                body = self._read_json()
                return self._send_json(200, app.query(text=body.get("query"), user_id=body.get("user_id"),
                                                      k=body.get("k", 10), version=body.get("version")))
            raise HttpError(405 if self._is_get_path(path) else 404, f"no POST endpoint {path}")
        if method not in ("GET", "HEAD"):
            raise HttpError(405, f"{method} not allowed", {"Allow": "GET, HEAD, POST"})
        if path == "/":
            return self._send_html(200, page.runs_page(runs.list_runs(app.runs_dir), app.runs_dir))
        if path.startswith("/runs/"):
            return self._send_html(200, page.run_page(app.run(path[len("/runs/"):])))
        if path == "/versions":
            return self._send_html(200, app.versions_html(params))
        if path == "/query":
            status, text = app.query_html(params)
            return self._send_html(status, text)
        if path.startswith("/files/"):
            try:
                return self._send_file(runs.resolve_file(app.runs_dir, path[len("/files/"):]))
            except runs.FileAccessError as exc:
                raise HttpError(404, str(exc)) from None
        if path == "/api/runs":
            return self._send_json(200, runs.list_runs(app.runs_dir))
        if path.startswith("/api/runs/"):
            return self._send_json(200, app.run(path[len("/api/runs/"):]))
        if path == "/api/versions":
            return self._send_json(200, app.version_listing())
        if path == "/healthz":
            return self._send_json(200, {"status": "ok"})
        if path == "/favicon.ico":
            return self._send_bytes(204, b"", "image/x-icon")
        raise HttpError(404, f"no page {path}")

    @staticmethod
    def _is_get_path(path: str) -> bool:
        return path in ("/", "/versions", "/query", "/api/runs", "/api/versions", "/healthz") or \
            path.startswith(("/runs/", "/files/", "/api/runs/"))

    def _check_origin(self) -> None:
        """HttpError(403) for a POST a page on another site (or an opaque one) could send.

        Non-browser clients (curl, scripts) send no Origin and no fetch metadata; a browser
        always sends both on a POST, so a browser POST without an Origin is refused too.
        """
        origin = self.headers.get("Origin")
        if origin is None:
            if any(self.headers.get(h) for h in _BROWSER_HEADERS):
                raise HttpError(403, "a browser POST without an Origin header is refused")
            return
        if origin.strip().lower() == "null":
            raise HttpError(403, "POST with Origin: null (a sandboxed or opaque page) refused")
        parts = urlsplit(origin.strip())
        host = self.headers.get("Host") or ""
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
            raise HttpError(403, f"cross-site POST from {origin} refused")

    def _check_token(self, form_token: Optional[str]) -> None:
        """HttpError(403) unless the request presents the UI's token (header or form field)."""
        presented = form_token or self.headers.get(TOKEN_HEADER)
        auth = (self.headers.get("Authorization") or "").split(None, 1)
        if not presented and len(auth) == 2 and auth[0].lower() in ("token", "bearer"):
            presented = auth[1].strip()
        if not presented or not hmac.compare_digest(presented.encode("utf-8", "replace"),
                                                    self.app.token.encode("utf-8")):
            raise HttpError(403, f"a rollback needs this UI's token (the {TOKEN_HEADER} header, or the "
                                 "versions page's form); `twotower ui` prints it at start")

    def _read_json(self) -> dict:
        return parse_json_object(self._read_body("application/json", MAX_BODY_BYTES))

    def _rollback_form(self) -> None:
        raw = self._read_body("application/x-www-form-urlencoded", MAX_BODY_BYTES)
        form = parse_qs(raw.decode("utf-8", "replace"))
        self._check_token((form.get(TOKEN_FIELD) or [""])[-1])  # refused outright: no redirect
        version = (form.get("version") or [""])[-1]
        try:
            live = self.app.rollback(version)
        except HttpError as exc:
            # Post/redirect/get either way: a reload never repeats the rollback.
            return self._redirect("/versions?" + urlencode({"error": str(exc)}))
        return self._redirect("/versions?" + urlencode({"ok": f"Rolled back: the live version is now {live}"}))


class UIServer:
    """Owns the listening socket and its thread. ``with UIServer(...) as s: s.url``."""

    def __init__(self, runs_dir: str, store: str, host: str = "127.0.0.1", port: int = 8090,
                 token: Optional[str] = None, allow_hosts=(), max_connections: int = 64):
        self.app = UIApp(runs_dir, store, token=token)
        self.host = host
        self.port = port
        self.host_policy = HostPolicy(host, allow_hosts)
        self.max_connections = max_connections
        self._httpd: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port (``port=0``: any free one)."""
        if self._httpd is not None:
            raise RuntimeError("UIServer already started")
        self._httpd = Server((self.host, self.port), _Handler, self.app, max_connections=self.max_connections,
                             host_policy=self.host_policy)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="twotower-ui-http", daemon=True)
        self._thread.start()
        log.info("ui on %s (runs %s, store %s)", self.url, self.app.runs_dir, self.app.store)
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._httpd = None

    def __enter__(self) -> "UIServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
