"""HTTP plumbing shared by the query service (:mod:`serving.server`) and the UI (``ui/server.py``).

Both are stdlib ``ThreadingHTTPServer`` apps speaking HTTP/1.1 keep-alive, so both need the
same care: a body is read only when its length is known and within a limit, a refused body
closes the connection (it would otherwise be read as the next request), and the process runs
until SIGTERM / SIGINT and then stops cleanly. This module holds that care once:

- :class:`HttpError`, the refusal a route raises (status, reason, extra headers);
- :class:`Server`, the threaded server carrying the application object handlers call;
- :class:`Handler`, the request-handler base: response head/body writing, ``_read_body``
  with Content-Type / Content-Length checks, and ``do_<METHOD>`` -> ``_dispatch(METHOD)``;
- :func:`run_until_stopped`, the signal-handling wait loop of a foreground server.

Only the standard library is used here: the UI may import ``serving``, never the reverse.
"""

from __future__ import annotations

import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


class HttpError(Exception):
    """A request the server refuses; ``status`` is the 4xx/5xx code, the message the reason."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = int(status)
        self.headers = headers or {}


class Server(ThreadingHTTPServer):
    """A threaded server whose handlers reach the application as ``self.server.app``."""

    daemon_threads = True  # idle keep-alive connections must not hold up shutdown
    allow_reuse_address = True

    def __init__(self, address, handler, app):
        self.app = app
        super().__init__(address, handler)


def _dispatcher(method: str) -> Callable[["Handler"], None]:
    def do_method(self: "Handler") -> None:
        self._dispatch(method)

    do_method.__name__ = do_method.__qualname__ = f"do_{method}"
    return do_method


class Handler(BaseHTTPRequestHandler):
    """Request-handler base; a subclass sets the class attributes below and ``_dispatch``.

    ``dispatch_methods`` names the HTTP methods routed to ``_dispatch(method)`` (a ``do_X``
    is made for each); any other method gets http.server's own 501.
    """

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold a thread
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms) on keep-alive connections.
    disable_nagle_algorithm = True
    server_version = "twotower"  # the whole Server header: no Python version on show
    access_log = logging.getLogger("twotower.http")  # the access log, at debug level
    dispatch_methods: tuple[str, ...] = ()

    # How a refused or broken body is answered. The defaults are the query service's;
    # the UI keeps the answers it has always given (see ui/server.py).
    chunked_reason = "chunked bodies are not accepted; send Content-Length"  # the 411's reason
    negative_length_invalid = True  # a negative Content-Length is a 400; False: a 413, like an oversized one
    body_timeout_status: Optional[int] = 408  # body slower than ``timeout``; None: the OSError propagates
    close_on_short_body = False  # a body that ended early also sends Connection: close

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for method in cls.dispatch_methods:
            setattr(cls, f"do_{method}", _dispatcher(method))

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def version_string(self) -> str:
        return self.server_version

    def _has_unread_body(self) -> bool:
        """True when the request announced a body (chunked or a non-zero length) that was not
        read: it would be taken for the next request, so the connection must close instead."""
        return not getattr(self, "_body_consumed", False) and bool(
            self.headers.get("Transfer-Encoding") or (self.headers.get("Content-Length") or "0").strip() != "0")

    def log_message(self, fmt, *args) -> None:  # through logging, not stderr
        self.access_log.debug("%s %s", self.address_string(), fmt % args)

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
        not received within ``timeout``; 400 body shorter than announced. Sets
        ``_body_consumed`` once the body is off the wire, so a dispatcher knows whether an
        unread body is left on the connection.
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
        try:
            data = self.rfile.read(n)
        except OSError:  # socket timeout: the client announced more than it sent
            if self.body_timeout_status is None:
                raise
            self.close_connection = True
            raise HttpError(self.body_timeout_status, f"request body not received within {self.timeout}s") from None
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
