"""HTTP plumbing shared by the query service (:mod:`serving.server`) and the UI (``ui/server.py``).

Both are stdlib ``ThreadingHTTPServer`` apps speaking HTTP/1.1 keep-alive, so both need the
same care, held here once:

- :class:`HttpError`, the refusal a route raises (status, reason, extra headers);
- :class:`HostPolicy`, the ``Host`` names a server answers to (DNS-rebinding defence);
- :class:`Server`, the threaded server: a deep listen backlog, a cap on open connections
  (idle keep-alive connections are closed first to make room; past the cap a new
  connection gets a 503 at once), and deadlines on slow clients;
- :class:`Handler`, the request-handler base: the whole request head must arrive within
  ``header_timeout`` seconds of its first byte and a body within ``body_timeout`` seconds
  (a client sending one header line every few seconds cannot hold a thread), response
  head/body writing, ``_read_body`` with Content-Type / Content-Length checks, and every
  well-formed method routed to ``_dispatch(METHOD)`` (an app answers 404 / 405, never
  http.server's 501; a malformed head is a 4xx, never a 505);
- :func:`run_until_stopped`, the signal-handling wait loop of a foreground server.

Why not uvicorn / aiohttp: measured side by side in ``bench/http_layer.py`` (see
docs/BENCHMARKS.md "HTTP layer"); the decision and its figures are in docs/ARCHITECTURE.md
"serve". Only the standard library is used here: the UI may import ``serving``, never the
reverse.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import signal
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Optional

log = logging.getLogger("twotower.http")

#: Longest reason quoted back to a client: error text never grows with the input.
MAX_REASON_CHARS = 500


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with a note of how much was cut)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class HttpError(Exception):
    """A request the server refuses; ``status`` is the 4xx/5xx code, the message the reason."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(bounded(message))
        self.status = int(status)
        self.headers = headers or {}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict:
    """A request body -> the JSON object it holds; HttpError(400) naming what is wrong.

    Strict where Python's json is lenient: NaN / Infinity are refused, and so is nesting
    deep enough to exhaust the recursion limit (json raises RecursionError, not ValueError).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise HttpError(400, "empty request body; send a JSON object")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so is NaN/Infinity above
        raise HttpError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


# -- Host names ------------------------------------------------------------------------------------
_LOOPBACK_NAMES = ("localhost",)
_WILDCARDS = ("", "0.0.0.0", "::")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host_header(value: str) -> str:
    """The host name of a ``Host`` / Origin authority, lower-cased, without port or trailing dot.

    ``"[::1]:8080"`` -> ``"::1"``, ``"LocalHost.:80"`` -> ``"localhost"``. Raises ValueError
    for something that is not a host[:port].
    """
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            raise ValueError(f"malformed host {value!r}")
        name, port = value[1:end], value[end + 2:]
    else:
        name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if port and not port.isdigit():
        raise ValueError(f"malformed port in host {value!r}")
    name = name.lower().rstrip(".")
    if not name or any(c in name for c in "/\\@ \t"):
        raise ValueError(f"malformed host {value!r}")
    return name


class HostPolicy:
    """Which ``Host`` header names a server answers to.

    A page on ``evil.example`` whose DNS answer is rebound to 127.0.0.1 reaches our socket
    with ``Host: evil.example``: refusing names we were not bound under stops it reading
    answers or run files, whatever the Origin. IP literals are always accepted (a page
    cannot rebind an address), and so is ``localhost``; a wildcard bind (0.0.0.0 / ::)
    also accepts this machine's host name. ``allow`` adds names (a load balancer's, a
    Kubernetes service's); ``"*"`` turns the check off.
    """

    def __init__(self, bind_host: str, allow: Iterable[str] = ()):
        extra = [a.strip().lower().rstrip(".") for a in allow if a and a.strip()]
        self.any = "*" in extra
        names = set(_LOOPBACK_NAMES) | {e for e in extra if e != "*"}
        bind = (bind_host or "").strip().lower().strip("[]")
        if bind and not _is_ip_literal(bind) and bind not in _WILDCARDS:
            names.add(bind.rstrip("."))  # bound by name: that name is ours
        if bind in _WILDCARDS:
            names |= {n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n}
        self.names = frozenset(names)

    def allows(self, host_header: Optional[str]) -> bool:
        """True for a Host we answer to. No Host at all (HTTP/1.0 tools) is allowed: a
        browser always sends one, and the check exists for browsers."""
        if self.any or host_header is None:
            return True
        try:
            name = split_host_header(host_header)
        except ValueError:
            return False
        return name in self.names or _is_ip_literal(name)

    def check(self, host_header: Optional[str]) -> None:
        """HttpError(403) unless :meth:`allows`."""
        if not self.allows(host_header):
            raise HttpError(403, f"Host {host_header!r} is not a name this server answers to "
                                 "(start it with --allow-host NAME to add one)")


# -- the server ------------------------------------------------------------------------------------
_BUSY_BODY = b'{"error": "too many open connections; retry shortly"}'
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s"
                  % (len(_BUSY_BODY), _BUSY_BODY))


class Server(ThreadingHTTPServer):
    """A threaded server whose handlers reach the application as ``self.server.app``.

    ``max_connections`` bounds the threads clients can hold. A connection past it first
    evicts the longest-idle keep-alive connection (it is between requests, so closing it
    loses nothing); with none idle it is answered 503 straight from the accept loop.
    Deadlines registered by handlers (:meth:`watch`) are enforced from the accept loop
    (``service_actions`` runs every ``poll_interval``): an overdue socket is shut down,
    which ends the handler's blocked read.
    """

    daemon_threads = True  # idle keep-alive connections must not hold up shutdown
    allow_reuse_address = True
    # socketserver's default backlog is 5: with a few clients opening a connection per
    # request, SYNs past it wait for a 1 s retransmit. The kernel caps it at somaxconn.
    request_queue_size = 1024

    def __init__(self, address, handler, app, max_connections: int = 128,
                 host_policy: Optional[HostPolicy] = None):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.app = app
        self.max_connections = int(max_connections)
        self.host_policy = host_policy or HostPolicy(address[0])
        self._lock = threading.Lock()
        self._open = 0
        self._idle: dict = {}  # handler -> monotonic time it went idle (between requests)
        self._deadlines: dict = {}  # handler -> monotonic deadline of its current read
        self.refused_connections = 0
        self.evicted_connections = 0
        self.timed_out_reads = 0
        super().__init__(address, handler)

    # connection accounting --------------------------------------------------------------------
    def process_request(self, request, client_address):
        victim = None
        with self._lock:
            full = self._open >= self.max_connections
            if full and self._idle:
                victim = min(self._idle, key=self._idle.get)  # the longest idle
                del self._idle[victim]
                self.evicted_connections += 1
            elif full:
                self.refused_connections += 1
            if victim is not None or not full:
                self._open += 1
        if victim is not None:
            victim.abort()
        elif full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open -= 1

    def _refuse(self, request) -> None:
        """A 503 from the accept loop; never blocks it on a client that does not read."""
        try:
            request.settimeout(0.0)
            request.send(_BUSY_RESPONSE)
        except OSError:
            pass  # the refusal is best effort: the client may be gone or its buffer full
        self.shutdown_request(request)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    # idle and deadline bookkeeping (called by handlers) ---------------------------------------
    def set_idle(self, handler, idle: bool) -> None:
        with self._lock:
            if idle:
                self._idle[handler] = time.monotonic()
            else:
                self._idle.pop(handler, None)

    def watch(self, handler, seconds: float) -> None:
        with self._lock:
            self._deadlines[handler] = time.monotonic() + seconds

    def unwatch(self, handler) -> None:
        with self._lock:
            self._deadlines.pop(handler, None)

    def service_actions(self) -> None:
        super().service_actions()
        now = time.monotonic()
        with self._lock:
            overdue = [h for h, deadline in self._deadlines.items() if deadline <= now]
            for handler in overdue:
                del self._deadlines[handler]
            self.timed_out_reads += len(overdue)
        for handler in overdue:
            handler.abort(timed_out=True)


#: RFC 9110 method token: anything else is a malformed request line.
_METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")


class Handler(BaseHTTPRequestHandler):
    """Request-handler base; a subclass sets the class attributes below and ``_dispatch``.

    Every well-formed request reaches ``_dispatch(method)``, whatever its method: the app
    answers a method it does not serve with a 405 (or a 404 for an unknown path).
    """

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold a thread (and one recv may take)
    header_timeout = 10.0  # seconds from a request's first byte to the end of its head
    body_timeout = 30.0  # seconds to receive a whole body once its head is in
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms) on keep-alive connections.
    disable_nagle_algorithm = True
    server_version = "twotower"  # the whole Server header: no Python version on show
    access_log = logging.getLogger("twotower.http")  # the access log, at debug level

    # How a refused or broken body is answered. The defaults are the query service's;
    # the UI keeps the answers it has always given (see ui/server.py).
    chunked_reason = "chunked bodies are not accepted; send Content-Length"  # the 411's reason
    negative_length_invalid = True  # a negative Content-Length is a 400; False: a 413, like an oversized one
    close_on_short_body = False  # a body that ended early also sends Connection: close

    _timed_out = False

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def version_string(self) -> str:
        return self.server_version

    # -- connection life ---------------------------------------------------------------------
    def abort(self, timed_out: bool = False) -> None:
        """End this connection from another thread: its blocked read returns at once."""
        self._timed_out = self._timed_out or timed_out
        try:
            # The read side only: the blocked read returns at once, and a refusal (408)
            # can still be written before the handler closes the connection.
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already closed by the client or by us

    def handle_one_request(self) -> None:
        """Wait (idle, evictable) for the next request's first byte, then read it under
        ``header_timeout`` and dispatch it. A client that stalls, resets or is evicted just
        ends the connection: nothing is logged as an error and no thread is held."""
        self._timed_out = False
        self.server.set_idle(self, True)
        try:
            first = self.rfile.peek(1)
        except OSError:  # idle timeout, reset
            first = b""
        finally:
            self.server.set_idle(self, False)
        if not first:
            self.close_connection = True
            return
        self.server.watch(self, self.header_timeout)
        try:
            self._read_and_dispatch()
        except OSError:  # the client went away, or we shut a stalled one down
            self.close_connection = True
        finally:
            self.server.unwatch(self)

    def _read_and_dispatch(self) -> None:
        """http.server's request reading, except that any well-formed method reaches
        ``_dispatch`` (which answers 404 / 405 as the app sees fit) instead of a 501."""
        self.raw_requestline = self.rfile.readline(65537)
        for _ in range(8):  # RFC 9112 2.2: ignore empty lines before a request line
            if self.raw_requestline not in (b"\r\n", b"\n"):
                break
            self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():  # it answered (400, 431, ...) itself
            return
        if self.request_version == "HTTP/0.9":
            # http.server would answer without a status line; nothing today speaks 0.9, and a
            # request that parses differently here than in a proxy in front is a smuggling risk.
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served; use HTTP/1.x")
            return
        self.server.unwatch(self)  # the head is in: its deadline no longer applies
        if self._timed_out:  # the reader gave up mid-head; what arrived is not a request
            self.close_connection = True
            return
        if not _METHOD_TOKEN.fullmatch(self.command):
            self.send_error(HTTPStatus.BAD_REQUEST, f"invalid method {self.command[:40]!r}")
            return
        self._dispatch(self.command)
        self.wfile.flush()

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's refusals of a malformed head, never as a 5xx: an unsupported HTTP
        version (505) or a method it cannot parse (501) is the client's error, a 400."""
        if int(code) >= 500:
            code, message = HTTPStatus.BAD_REQUEST, message or HTTPStatus(int(code)).phrase
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # so the refusal carries a status line
        self.close_connection = True
        super().send_error(code, message, explain)

    def _has_unread_body(self) -> bool:
        """True when the request announced a body (chunked or a non-zero length) that was not
        read: it would be taken for the next request, so the connection must close instead."""
        return not getattr(self, "_body_consumed", False) and bool(
            self.headers.get("Transfer-Encoding") or (self.headers.get("Content-Length") or "0").strip() != "0")

    def log_message(self, fmt, *args) -> None:  # through logging, not stderr
        self.access_log.debug("%s %s", self.address_string(), fmt % args)

    def _check_host(self) -> None:
        """HttpError(403) when the Host header names a server other than this one."""
        self.server.host_policy.check(self.headers.get("Host"))

    # -- responses -----------------------------------------------------------------------------
    def _send_head(self, status: int, ctype: str, length: int, headers: Optional[dict] = None) -> None:
        """Status line and headers; ``Connection: close`` when this exchange ends the connection."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(self, status: int, data: bytes, ctype: str, headers: Optional[dict] = None) -> None:
        """A whole response; a HEAD gets the same headers and no body."""
        self._send_head(status, ctype, len(data), headers)
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- request bodies ------------------------------------------------------------------------
    def _read_body(self, expected_type: str, max_bytes: int) -> bytes:
        """The request body, read only when its type and announced length are acceptable.

        Refusals (:class:`HttpError`): 415 Content-Type other than ``expected_type``; 411 no
        Content-Length, or chunked; 400 Content-Length not an integer (or negative, see
        ``negative_length_invalid``); 413 over ``max_bytes``, judged before reading; 408 body
        not received within ``body_timeout`` seconds in all; 400 body shorter than announced.
        Sets ``_body_consumed`` once the body is off the wire, so a dispatcher knows whether
        an unread body is left on the connection.
        """
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != expected_type:
            raise HttpError(415, f"Content-Type must be {expected_type}, got {ctype or 'none'!r}")
        chunked = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if chunked or length is None:
            self.close_connection = True  # we cannot tell where the client's body would end
            raise HttpError(411, self.chunked_reason if chunked else "Content-Length header required")
        try:
            n = int(length)
        except ValueError:
            raise HttpError(400, f"invalid Content-Length {length!r}") from None
        if n < 0 and self.negative_length_invalid:
            raise HttpError(400, f"invalid Content-Length {length!r}")
        if not 0 <= n <= max_bytes:
            raise HttpError(413, f"request body of {n} bytes exceeds the limit of {max_bytes}")
        self.server.watch(self, self.body_timeout)
        try:
            data = self.rfile.read(n)
        except OSError:  # socket timeout: the client announced more than it sent
            data = None
        finally:
            self.server.unwatch(self)
        if data is None or (self._timed_out and len(data) != n):
            self.close_connection = True
            raise HttpError(408, f"request body not received within {self.body_timeout:g}s")
        self._body_consumed = True
        if len(data) != n:
            if self.close_on_short_body:
                self.close_connection = True
            raise HttpError(400, f"request body ended after {len(data)} of {n} bytes")
        return data


def run_until_stopped(start: Callable[[], None], stop: Callable[[], None],
                      stop_event: Optional[threading.Event] = None,
                      logger: Optional[logging.Logger] = None) -> None:
    """Call ``start()``, wait for SIGTERM / SIGINT (or ``stop_event``), then ``stop()``.

    The signal handlers are installed before ``start()`` (so a signal during a slow start
    still stops cleanly) and the previous ones restored after ``stop()``. Python only lets
    the main thread install handlers: from any other thread none are installed, and the
    caller stops the loop through ``stop_event``. ``logger`` (when given) logs the signal.
    ``stop()`` runs even when ``start()`` raises.
    """
    event = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def _on_signal(signum, _frame):
            if logger is not None:
                logger.info("received %s, shutting down", signal.Signals(signum).name)
            event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        start()
        while not event.wait(0.5):
            pass
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
