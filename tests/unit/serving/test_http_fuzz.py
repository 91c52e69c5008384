"""Fuzz the query service and the run browser with a few thousand generated requests.

Requests are built from a seeded generator (methods, request lines, paths, headers, Content-
Length lies, encodings, JSON bodies with numbers at the float32 edges, lone surrogates,
invalid UTF-8, deep nesting) and sent as raw bytes, several clients at once. The bar: no
answer is a 5xx, the server answers a normal client afterwards, and (the run browser) no
request without the token moved CURRENT, whatever its Origin or Host.

Deadlines are shortened so requests that lie about their body cost a fraction of a second.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import socket

import pytest

import serving.http
from core.store import VersionStore
from serving.server import QueryService
from tests.support.http_client import call, retrieve
from tests.support.stores import build_store, copy_store
from tests.support.ui_runs import ALL_STAGES, SUMMARY, make_run
from ui.server import UIServer

SEED = 20261201
N_SERVICE = 2000
N_UI = 1500
CLIENTS = 8

FLOAT32_EDGES = [3.4028234663852886e38, 3.4028235677973366e38, -3.4028235677973366e38, 1.401298464324817e-45,
                 1e-46, -0.0, 0.0, 1e308, -1e308, 1e30, -1e30, 2 ** 63, -(2 ** 63) - 1, 10 ** 40, 65504.0, 1]
RAW_NUMBERS = ["1e309", "-1e309", "NaN", "Infinity", "-Infinity", "1" * 5000, "0." + "0" * 400 + "1", "1e-400",
               "-0", "00", "1.", ".5", "0x10", "+1"]
STRINGS = ["", "1", "42", "u0", "nike running shoes", "\\ud800", "\\udfff", "a\\ud83dz", "\\u0000", "é" * 3,
           "x" * 70000, "🙂", "\\\"", "<script>alert(1)</script>", "../../etc/passwd", "%00", " "]


def _json_value(rng: random.Random, depth: int = 0) -> str:
    """A JSON text (as str, so invalid escapes and bare literals can be produced)."""
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return json.dumps(rng.choice(FLOAT32_EDGES))
    if kind == 1:
        return rng.choice(RAW_NUMBERS)
    if kind == 2:
        return '"' + rng.choice(STRINGS) + '"'
    if kind == 3:
        return rng.choice(["true", "false", "null"])
    if kind == 4:
        return str(rng.randint(-5, 2000))
    if kind == 5:
        return "[" + ",".join(_json_value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    if kind == 6:
        return "[" * 50000 + "]" * rng.choice([0, 50000])
    keys = rng.sample(["user_id", "age", "query", "k", "exclude_seen", "features", "version", "x", ""],
                      rng.randrange(1, 4))
    return "{" + ",".join(f'"{key}": {_json_value(rng, depth + 1)}' for key in keys) + "}"


def _service_body(rng: random.Random) -> str:
    selector = rng.choice(["user_id"] * 3 + ["features"] * 3 + ["query", "both", "none", "raw"])
    parts = []
    if selector in ("user_id", "both"):
        parts.append(f'"user_id": {_json_value(rng, 2) if rng.random() < 0.3 else json.dumps(str(rng.randrange(12)))}')
    if selector in ("query", "both"):
        parts.append(f'"query": {_json_value(rng, 2)}')
    if selector == "features":
        feats = [f'"user_id": {json.dumps(str(rng.randrange(12))) if rng.random() < 0.6 else _json_value(rng, 2)}',
                 f'"age": {json.dumps(rng.choice(FLOAT32_EDGES)) if rng.random() < 0.6 else _json_value(rng, 2)}']
        if rng.random() < 0.2:
            feats.append(f'"extra": {_json_value(rng, 2)}')
        parts.append('"features": {' + ",".join(rng.sample(feats, rng.randrange(len(feats) + 1))) + "}")
    if selector == "raw":
        return _json_value(rng)
    if rng.random() < 0.5:
        parts.append(f'"k": {rng.choice(["1", "10", "1000", "5", "7", "1001", "0", "-1", "1e3", "true", "10.5", "null"])}')
    if rng.random() < 0.3:
        parts.append(f'"exclude_seen": {rng.choice(["true", "false", "true", "false", "1", "null", "[]"])}')
    return "{" + ",".join(parts) + "}"


def _encode(text: str, rng: random.Random) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    roll = rng.random()
    if roll < 0.04:
        data = b"\xff\xfe" + data  # invalid UTF-8
    elif roll < 0.06:
        data = data.decode("utf-8", "replace").encode("utf-16")
    elif roll < 0.08:
        data = data[: rng.randrange(len(data) + 1)]  # truncated JSON
    return data


def _request(rng: random.Random, paths: list[str], body_of, host: str, extra_headers) -> bytes:
    """One raw HTTP request: 20 % well-formed GETs, 24 % well-formed POSTs with a fuzzed body,
    the rest fuzzed throughout."""
    if rng.random() < 0.2:
        return (f"GET {rng.choice(paths)} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in extra_headers(rng)) + "\r\n").encode()
    if rng.random() < 0.3:
        body = body_of(rng).encode("utf-8", "surrogatepass")
        return (f"POST {paths[0]} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in extra_headers(rng)) + "\r\n").encode() + body
    method = rng.choice(["GET", "POST", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                         "CONNECT", "G\x00T", "get", "POST" * 300])
    path = rng.choice(paths)
    if rng.random() < 0.1:
        path = rng.choice(["*", "", "//", "/" + "a" * 70000, "/%", "/%ZZ", "/%00", "/\xff", "http://evil.example/",
                           path + "?" + "&".join(f"{rng.choice(['k', 'q', 'mode', 'version'])}="
                                                  f"{rng.choice(['1e309', '%ff', '-1', '', 'x' * 3000, '%00'])}"
                                                  for _ in range(rng.randrange(1, 4)))])
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", ""])
    line = f"{method} {path} {version}".rstrip() if rng.random() > 0.02 else rng.choice(["", "GET", "\x16\x03\x01"])
    body = _encode(body_of(rng), rng) if method.upper().startswith("POST") or rng.random() < 0.1 else b""
    headers = []
    if rng.random() < 0.95:
        headers.append(("Host", host if rng.random() < 0.9 else rng.choice(["evil.example", "", "[::1", "a b"])))
    headers.append(("Content-Type", rng.choice(["application/json"] * 6 + [
        "application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-16", "", "\xff"])))
    length = rng.random()
    if length < 0.85:
        headers.append(("Content-Length", str(len(body))))
    elif length < 0.88:
        headers.append(("Content-Length", rng.choice(["-1", "abc", "1e3", "99999999999999999999", " 5", "0x10"])))
    elif length < 0.90:
        headers.append(("Content-Length", str(len(body) + rng.randrange(1, 50))))  # lies: announces more
    elif length < 0.92:
        headers += [("Content-Length", str(len(body))), ("Content-Length", "0")]
    elif length < 0.94:
        headers.append(("Transfer-Encoding", "chunked"))
    if rng.random() < 0.1:
        headers.append(("Expect", "100-continue"))
    if rng.random() < 0.03:
        headers += [(f"X-{i}", "v") for i in range(rng.choice([50, 120]))]
    if rng.random() < 0.02:
        headers.append(("X-Long", "v" * 70000))
    headers += extra_headers(rng)
    headers.append(("Connection", "close" if rng.random() < 0.9 else "keep-alive"))
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1", "replace") + body


def _exchange(port: int, data: bytes) -> int | None:
    """Send, read to the end; the status of the first answer (None: closed without one)."""
    chunks = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the server may refuse mid-send (a 431/413 before the rest): read what it said
            sock.settimeout(3)
            while True:
                try:
                    chunk = sock.recv(65536)
                except (socket.timeout, ConnectionResetError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if sum(map(len, chunks)) > 1 << 20:
                    break
    except ConnectionRefusedError:
        raise
    text = b"".join(chunks)
    while text.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue; the answer follows
        text = text[text.find(b"\r\n\r\n") + 4:]
    if not text.startswith(b"HTTP/"):
        return None
    return int(text.split(b" ", 2)[1])


def _fuzz(port: int, n: int, make) -> dict[int | None, int]:
    rng = random.Random(SEED)
    requests = [make(rng) for _ in range(n)]
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(lambda data: _exchange(port, data), requests))
    counts: dict[int | None, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.fixture
def short_deadlines(monkeypatch):
    monkeypatch.setattr(serving.http.Handler, "timeout", 1)
    monkeypatch.setattr(serving.http.Handler, "header_timeout", 0.5)
    monkeypatch.setattr(serving.http.Handler, "body_timeout", 0.5)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.slow
def test_query_service_survives_fuzzing(fuzz_store, tmp_path, short_deadlines):
    store = copy_store(fuzz_store, tmp_path / "store")
    service = QueryService(store, port=0, poll_seconds=0.2)
    service.start()
    try:
        service.wait_ready(timeout=30)
        host = f"127.0.0.1:{service.port}"
        paths = ["/v1/retrieve"] * 6 + ["/readyz", "/healthz", "/v1/version", "/", "/v1/retrieve/", "/V1/RETRIEVE"]
        counts = _fuzz(service.port, N_SERVICE,
                       lambda rng: _request(rng, paths, _service_body, host, lambda r: []))
        print(f"query service, {N_SERVICE} fuzzed requests: statuses {sorted(counts.items(), key=str)}")
        errors = {s: c for s, c in counts.items() if s is not None and s >= 500}
        assert not errors, counts
        assert counts.get(200, 0) > 100 and sum(c for s, c in counts.items() if s and 400 <= s < 500) > 500, counts
        # Still a normal service afterwards.
        status, answer = retrieve(service.port, {"user_id": "3", "k": 5})
        assert status == 200 and len(answer["items"]) == 5
        assert call(service.port, "GET", "/readyz")[0] == 200
    finally:
        service.stop()


def _ui_body(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "version=" + rng.choice(["20261122T080100000000Z-000001", "../x", "%ff", "", "x" * 3000])
    return _json_value(rng)


@pytest.mark.slow
def test_run_browser_survives_fuzzing_and_no_tokenless_request_moves_current(fuzz_store, tmp_path,
                                                                            short_deadlines):
    store = copy_store(fuzz_store, tmp_path / "store")
    runs_dir = tmp_path / "runs"
    run_id = "20261122T080000Z-aaaaaa"
    make_run(runs_dir, run_id, summary=SUMMARY, stages=ALL_STAGES)
    live = VersionStore(store).current()
    # A second complete version to roll back to, so a successful rollback would be visible.
    other = fuzz_store.first_version
    assert other == live
    with UIServer(str(runs_dir), store, port=0) as server:
        host = f"127.0.0.1:{server.port}"
        paths = ["/api/query", "/", f"/runs/{run_id}", "/runs/nope", "/versions", "/query", "/query?q=1&mode=user_id",
                 "/query?q=shoes&k=1001", f"/files/{run_id}/pipeline.log", "/files/../store/CURRENT",
                 "/api/runs", f"/api/runs/{run_id}", "/api/versions", "/api/rollback", "/api/rollback",
                 "/versions/rollback", "/versions/rollback", "/api/query", "/api/query", "/healthz", "/favicon.ico"]

        def origin(rng):
            return [("Origin", rng.choice(["null", "http://evil.example", f"http://{host}", "file://", ""]))] \
                if rng.random() < 0.5 else []

        counts = _fuzz(server.port, N_UI, lambda rng: _request(rng, paths, _ui_body, host, origin))
        print(f"run browser, {N_UI} fuzzed requests: statuses {sorted(counts.items(), key=str)}")
        errors = {s: c for s, c in counts.items() if s is not None and s >= 500}
        assert not errors, counts
        assert counts.get(200, 0) > 100 and counts.get(403, 0) > 50, counts
        assert VersionStore(store).current() == live  # no request carried the token
        assert _exchange(server.port, f"GET /versions HTTP/1.1\r\nHost: {host}\r\n"
                                      "Connection: close\r\n\r\n".encode()) == 200
