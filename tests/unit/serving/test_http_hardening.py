"""The shared HTTP layer (serving/http.py) and the UI's cross-site defences, as a hostile client.

Each test reproduces a defect a probe of the running system found:

- the UI accepted a rollback form POSTed with ``Origin: null`` (a sandboxed iframe on any
  page) and one from a DNS-rebound name (``Host: evil.example``), and needed no token;
- the listen backlog was socketserver's 5: connections past it waited for a SYN retransmit;
- nothing capped open connections, and a client sending one header line every few seconds
  (or a body byte by byte) held a thread for as long as it liked.

The server mechanics are tested on a tiny handler (no TensorFlow), the UI on a hand-made
store, the query service's Host check on the real service (tests/unit/serving/test_server.py's store).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse

import pytest

from core.store import VersionStore
from serving.http import Handler, HostPolicy, HttpError, Server, split_host_header
from tests.support.ui_runs import ALL_STAGES, SUMMARY, make_run, publish
from ui.server import UIServer

OLD = "20261122T080100000000Z-000001"
LIVE = "20261122T090100000000Z-000002"


# ---------------------------------------------------------------- a tiny app on the shared layer
class _Echo(Handler):
    """GET /ok -> 200; POST /echo -> the body back; the Host check as the real apps do it."""


    def _dispatch(self, method: str) -> None:
        self._body_consumed = False
        try:
            self._check_host()
            if method == "POST":
                data = self._read_body("application/json", 1024)
                status, body = 200, data
            else:
                status, body = 200, b'{"ok": true}'
        except HttpError as exc:
            status, body = exc.status, json.dumps({"error": str(exc)}).encode()
        if self._has_unread_body():
            self.close_connection = True
        self._send_body(status, body, "application/json")


@pytest.fixture
def echo_server(monkeypatch):
    """Factory: a started Server on 127.0.0.1 (short deadlines); stopped at teardown."""
    started = []

    def _start(serve=True, **kwargs):
        server = Server(("127.0.0.1", 0), _Echo, app=None, **kwargs)
        if serve:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
        started.append((server, serve))
        return server

    monkeypatch.setattr(_Echo, "header_timeout", 0.5)
    monkeypatch.setattr(_Echo, "body_timeout", 0.5)
    yield _start
    for server, served in started:
        if served:
            server.shutdown()
        server.server_close()


def _get_ok(port: int, host_header: str = None, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("GET", "/ok", skip_host=host_header is not None)
        if host_header is not None:
            conn.putheader("Host", host_header)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float | None:
    """Send ``drip`` every 0.1 s until the server closes the connection; seconds taken, None if it never did."""
    sock.settimeout(0.1)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if drip:
                sock.sendall(drip)
            data = sock.recv(4096)
            if not data or b"408" in data or b"400" in data:
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:  # reset / broken pipe: closed
            return time.monotonic() - started
    return None


# ---------------------------------------------------------------- Host names
@pytest.mark.parametrize("value, name", [("127.0.0.1:8090", "127.0.0.1"), ("[::1]:80", "::1"),
                                         ("LocalHost.:8090", "localhost"), ("evil.example", "evil.example")])
def test_split_host_header(value, name):
    assert split_host_header(value) == name


@pytest.mark.parametrize("value", ["", "a b", "[::1", "host:port", "x@evil.example"])
def test_split_host_header_refuses_junk(value):
    with pytest.raises(ValueError):
        split_host_header(value)


def test_host_policy_names():
    loopback = HostPolicy("127.0.0.1")
    for ok in ("127.0.0.1:8090", "localhost:8090", "[::1]:8090", "10.1.2.3:80", None):
        assert loopback.allows(ok), ok
    for bad in ("evil.example:8090", "localhost.evil.example", "", "a b"):
        assert not loopback.allows(bad), bad
    assert HostPolicy("127.0.0.1", ["serve.internal"]).allows("Serve.Internal:8080")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")
    wildcard = HostPolicy("0.0.0.0")
    assert wildcard.allows(socket.gethostname()) and not wildcard.allows("evil.example")


def test_rebound_host_is_refused_by_the_shared_layer(echo_server):
    server = echo_server()
    port = server.server_address[1]
    assert _get_ok(port) == 200  # http.client sends Host: 127.0.0.1:<port>
    assert _get_ok(port, f"localhost:{port}") == 200
    assert _get_ok(port, f"evil.example:{port}") == 403


# ---------------------------------------------------------------- backlog, connection cap, deadlines
def test_listen_backlog_holds_a_burst_of_connections(echo_server):
    # Accept loop not running: every connection must wait in the kernel's queue. With
    # socketserver's backlog of 5 the 7th handshake already stalls (SYN dropped, 1 s retry).
    server = echo_server(serve=False)
    port = server.server_address[1]
    socks = []
    try:
        completed = 0
        for _ in range(64):
            s = socket.socket()
            s.settimeout(0.5)
            socks.append(s)
            try:
                s.connect(("127.0.0.1", port))
                completed += 1
            except OSError:
                pass
        assert completed == 64
    finally:
        for s in socks:
            s.close()


def test_idle_connections_are_evicted_for_new_ones(echo_server):
    server = echo_server(max_connections=4)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        deadline = time.monotonic() + 5
        while server.open_connections < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _get_ok(port) == 200  # an idle keep-alive connection made room
        assert server.evicted_connections >= 1
    finally:
        for s in idle:
            s.close()


def test_past_the_cap_new_connections_get_503(echo_server, monkeypatch):
    monkeypatch.setattr(_Echo, "header_timeout", 30.0)  # the busy ones must stay busy
    server = echo_server(max_connections=3)
    port = server.server_address[1]
    busy = []
    try:
        for _ in range(3):  # mid-request (head not finished): not idle, not evictable
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            busy.append(s)
        deadline = time.monotonic() + 5
        while server.open_connections < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the three are past their first byte
        assert _get_ok(port) == 503
        assert server.refused_connections >= 1
    finally:
        for s in busy:
            s.close()
    deadline = time.monotonic() + 5
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _get_ok(port) == 200  # the slots came back


def test_a_header_drip_does_not_hold_a_thread(echo_server):
    server = echo_server()
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\n")
        took = _closed_within(s, 5.0, drip=b"X-Drip: 1\r\n")
    assert took is not None and took < 3.0, took  # header_timeout 0.5 s, polled every 0.05 s
    assert server.timed_out_reads >= 1
    assert _get_ok(port) == 200


def test_a_body_drip_gets_408(echo_server):
    server = echo_server()
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n")
        took = _closed_within(s, 5.0, drip=b" ")
    assert took is not None and took < 3.0, took
    assert _get_ok(port) == 200


def test_an_idle_keep_alive_connection_is_not_a_header_timeout(echo_server):
    # Between requests the idle timeout applies (30 s), not the header deadline (0.5 s here).
    server = echo_server()
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ok")
        assert conn.getresponse().read() == b'{"ok": true}'
        time.sleep(1.0)
        conn.request("GET", "/ok")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# ---------------------------------------------------------------- the UI's state changes
@pytest.fixture
def ui(tmp_path):
    runs_dir, store = tmp_path / "runs", tmp_path / "store"
    make_run(runs_dir, "20261122T080000Z-aaaaaa", summary=SUMMARY, stages=ALL_STAGES)
    publish(store, tmp_path, OLD, "20261122T080000Z-aaaaaa", 0.4)
    publish(store, tmp_path, LIVE, "20261122T090000Z-bbbbbb", 0.5)
    with UIServer(str(runs_dir), str(store), port=0) as server:
        yield server, VersionStore(str(store))


def _raw(server, method, path, body=b"", headers=None):
    """One request with exactly the headers given (Host included): what a browser page could send."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body or method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _rollback_form(server, origin=None, host=None, token=None, fetch_site=None):
    fields = {"version": OLD, **({"token": token} if token is not None else {})}
    headers = {"Host": host or f"127.0.0.1:{server.port}", "Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin
    if fetch_site is not None:
        headers["Sec-Fetch-Site"] = fetch_site
    return _raw(server, "POST", "/versions/rollback", urllib.parse.urlencode(fields).encode(), headers)


def test_null_origin_form_post_cannot_roll_back(ui):
    server, store = ui
    status, body = _rollback_form(server, origin="null")  # a sandboxed iframe on any page
    assert status == 403 and "Origin: null" in body
    status, _ = _rollback_form(server, origin="null", token=server.app.token)  # even with the token
    assert status == 403
    assert store.current() == LIVE


def test_dns_rebound_page_can_neither_roll_back_nor_read(ui):
    server, store = ui
    rebound = f"evil.example:{server.port}"
    status, body = _rollback_form(server, origin=f"http://{rebound}", host=rebound)
    assert status == 403 and "evil.example" in body
    for path in ("/api/versions", "/files/20261122T080000Z-aaaaaa/pipeline.log", "/versions", "/"):
        status, body = _raw(server, "GET", path, headers={"Host": rebound})
        assert status == 403 and "runner output" not in body, path
    assert store.current() == LIVE


def test_cross_site_and_tokenless_rollbacks_are_refused(ui):
    server, store = ui
    assert _rollback_form(server, origin="http://evil.example")[0] == 403
    assert _rollback_form(server)[0] == 403  # a script without the token
    assert _rollback_form(server, token="wrong-" + server.app.token)[0] == 403
    assert _rollback_form(server, token=server.app.token, fetch_site="cross-site")[0] == 403  # browser, no Origin
    status, body = _raw(server, "POST", "/api/rollback", json.dumps({"version": OLD}).encode(),
                        {"Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json"})
    assert status == 403 and "token" in body
    assert store.current() == LIVE


def test_same_origin_form_and_api_with_the_token_roll_back(ui):
    server, store = ui
    origin = f"http://127.0.0.1:{server.port}"
    status, _ = _rollback_form(server, origin=origin, token=server.app.token, fetch_site="same-origin")
    assert status == 303 and store.current() == OLD
    status, body = _raw(server, "POST", "/api/rollback", json.dumps({"version": LIVE}).encode(),
                        {"Host": f"localhost:{server.port}", "Content-Type": "application/json",
                         "Authorization": f"token {server.app.token}"})
    assert status == 200 and json.loads(body) == {"live": LIVE} and store.current() == LIVE


def test_ui_query_api_refuses_cross_site_posts(ui):
    server, _ = ui
    headers = {"Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json", "Origin": "null"}
    status, _ = _raw(server, "POST", "/api/query", b'{"query": "x"}', headers)
    assert status == 403


def test_ui_query_with_a_damaged_current_is_a_4xx_with_the_reason(ui, tmp_path):
    server, store = ui
    with open(store.current_path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + LIVE.encode())  # a BOM before the id
    headers = {"Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json"}
    status, body = _raw(server, "POST", "/api/query", b'{"query": "x"}', headers)
    assert status == 400 and "CURRENT" in json.loads(body)["error"], body
    status, body = _raw(server, "GET", "/query?q=x", headers={"Host": f"127.0.0.1:{server.port}"})
    assert status == 400 and "CURRENT" in body
    # The versions page still lists the versions, says what is wrong, and a rollback repairs it.
    status, body = _raw(server, "GET", "/versions", headers={"Host": f"127.0.0.1:{server.port}"})
    assert status == 200 and "CURRENT" in body and "repair" in body and body.count("<button") == 2
    status, _ = _rollback_form(server, token=server.app.token)
    assert status == 303 and store.current() == OLD
