"""serving.server.QueryService over real HTTP on 127.0.0.1, on tiny published stores.

The store is built by ``tests.support.stores.build_store`` (fixture towers from
``tests.support.indexer_models``); every test copies it so hot-reload tests can move CURRENT
freely. The HTTP helpers are ``tests.support.http_client``'s.
"""

from __future__ import annotations

import http.client
import concurrent.futures
import json
import os
import re
import shutil
import socket
import threading
import time

import pytest

from core import storage
from core.store import CURRENT, VERSIONS, VersionStore, _manifest_files
from serving.retriever import Retriever
from serving.server import QueryService
from tests.support.http_client import FAST_POLL, call, retrieve, wait_for
from tests.support.indexer_models import N_USERS, build_tower
from tests.support.stores import build_store, copy_store, publish_version


# ---------------------------------------------------------------- helpers


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> str:
    """Send raw bytes, read until the server closes the connection."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode()


def point_current(store: str, version: str) -> None:
    """Move CURRENT by hand (what a buggy or racing writer could leave behind)."""
    storage.write_text(os.path.join(store, CURRENT), version)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


def clone_version(store: str, version: str, new_id: str) -> str:
    src = os.path.join(store, VERSIONS, version)
    dest = os.path.join(store, VERSIONS, new_id)
    shutil.copytree(src, dest)
    manifest = _read_json(os.path.join(dest, "manifest.json"))
    manifest["version"] = new_id
    _write_json(os.path.join(dest, "manifest.json"), manifest)
    return dest


def rewrite_manifest_files(folder: str) -> None:
    """Make the manifest's checksums match the folder again (the version is internally consistent)."""
    path = os.path.join(folder, "manifest.json")
    manifest = _read_json(path)
    os.unlink(path)
    manifest["files"] = _manifest_files(folder)
    _write_json(path, manifest)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    b = build_store(tmp, extra_query_seeds=(11,))
    # A 4-dim query tower: loads and verifies fine, fails at warm-up against the 8-dim index.
    build_tower(str(tmp / "model-4d" / "query_tower"), "query", dims=4, seed=5)
    b.query_models["4d"] = str(tmp / "model-4d")
    return b


@pytest.fixture(scope="module")
def shared_service(built, tmp_path_factory):
    """A service over an untouched copy of the store, for the read-only tests."""
    store = copy_store(built, tmp_path_factory.mktemp("ro") / "store")
    service = QueryService(store, port=0, poll_seconds=FAST_POLL)
    service.start()
    try:
        service.wait_ready(timeout=30)
        yield service, Retriever.load(store)
    finally:
        service.stop()


@pytest.fixture
def service_on(tmp_path):
    """Factory: start a service on ``store``; every service started is stopped at teardown."""
    started = []

    def _start(store, **kwargs):
        kwargs.setdefault("poll_seconds", FAST_POLL)
        svc = QueryService(store, port=0, **kwargs)
        svc.start()
        started.append(svc)
        return svc

    yield _start
    for svc in started:
        svc.stop()


def _ids(answer):
    return [it["item_id"] for it in answer["items"]]


# ---------------------------------------------------------------- answers
def test_retrieve_by_user_id_features_and_exclude_seen(shared_service):
    service, reference = shared_service
    port = service.port
    status, by_id = retrieve(port, {"user_id": "3", "k": 7})
    assert status == 200, by_id
    assert by_id["version"] == reference.version
    expected = reference.retrieve({"user_id": "3"}, k=7)
    assert _ids(by_id) == _ids(expected) and len(by_id["items"]) == 7
    assert by_id["scores"] == pytest.approx(expected["scores"], abs=1e-6)
    assert set(by_id["items"][0]) == {"item_id", "title", "price"}  # display fields come along

    status, by_int = retrieve(port, {"user_id": 3, "k": 7})
    status2, by_features = retrieve(port, {"features": {"user_id": "3", "age": 23.0}, "k": 7})
    assert status == status2 == 200
    assert _ids(by_int) == _ids(by_features) == _ids(by_id)

    status, default_k = retrieve(port, {"features": {"user_id": "new-user", "age": 41}})
    assert status == 200 and len(default_k["items"]) == 10 == len(default_k["scores"])
    assert default_k["scores"] == sorted(default_k["scores"], reverse=True)

    for user in map(str, range(N_USERS)):
        history = reference.seen[user]
        status, unseen = retrieve(port, {"user_id": user, "k": 10, "exclude_seen": True})
        assert status == 200
        assert len(unseen["items"]) == 10 and not history & set(_ids(unseen))
        assert _ids(unseen) == _ids(reference.retrieve({"user_id": user}, k=10, exclude_seen=True))


def test_healthz_readyz_and_version(shared_service):
    service, reference = shared_service
    assert call(service.port, "GET", "/healthz")[:2] == (200, {"status": "ok"})
    status, ready, _ = call(service.port, "GET", "/readyz")
    assert status == 200 and ready["ready"] is True
    assert ready["version"] == reference.version and ready["loaded_at"] and ready["last_reload_error"] is None
    status, info, _ = call(service.port, "GET", "/v1/version")
    assert status == 200 and info["version"] == reference.version
    assert info["last_reload"]["ok"] is True and info["last_reload"]["version"] == reference.version
    assert call(service.port, "HEAD", "/healthz")[0] == 200


BAD_REQUESTS = [
    # (method, path, body bytes or dict, extra headers, status, reason regex)
    ("POST", "/v1/retrieve", b"{not json", {}, 400, "malformed JSON"),
    ("POST", "/v1/retrieve", b'{"user_id": "1", "k": NaN}', {}, 400, "malformed JSON"),
    ("POST", "/v1/retrieve", b"\xff\xfe", {}, 400, "UTF-8"),
    ("POST", "/v1/retrieve", b"", {}, 400, "empty request body"),
    ("POST", "/v1/retrieve", b"[" * 60000, {}, 400, "malformed JSON: nested too deeply"),
    ("POST", "/v1/retrieve", [{"user_id": "1"}], {}, 400, "must be a JSON object"),
    ("POST", "/v1/retrieve", "user 1", {}, 400, "must be a JSON object"),
    ("POST", "/v1/retrieve", {}, {}, 400, "exactly one of"),
    ("POST", "/v1/retrieve", {"user_id": "1", "query": "x"}, {}, 400, "exactly one of"),
    ("POST", "/v1/retrieve", {"user_id": "1", "top_k": 5}, {}, 400, r"unknown request field\(s\) \['top_k'\]"),
    ("POST", "/v1/retrieve", {"user_id": "1", "k": 0}, {}, 400, r"k must be an integer in 1\.\.1000"),
    ("POST", "/v1/retrieve", {"user_id": "1", "k": 1001}, {}, 400, r"k must be an integer in 1\.\.1000"),
    ("POST", "/v1/retrieve", {"user_id": "1", "k": "5"}, {}, 400, "k must be an integer"),
    ("POST", "/v1/retrieve", {"user_id": "1", "k": 2.5}, {}, 400, "k must be an integer"),
    ("POST", "/v1/retrieve", {"user_id": "1", "k": True}, {}, 400, "k must be an integer"),
    ("POST", "/v1/retrieve", {"user_id": "1", "exclude_seen": "yes"}, {}, 400, "exclude_seen must be true or false"),
    ("POST", "/v1/retrieve", {"user_id": 1.5}, {}, 400, "'user_id' must be a string or integer"),
    ("POST", "/v1/retrieve", {"user_id": None}, {}, 400, "'user_id' must be a string or integer"),
    ("POST", "/v1/retrieve", {"user_id": "999"}, {}, 404, "unknown user_id '999'"),
    ("POST", "/v1/retrieve", {"query": "shoes"}, {}, 400, "free-text 'query' requests need a text query key"),
    ("POST", "/v1/retrieve", {"features": {"user_id": "1"}}, {}, 400, r"missing query feature\(s\) \['age'\]"),
    ("POST", "/v1/retrieve", {"features": {"user_id": "1", "age": 3, "zip": "x"}}, {}, 400,
     r"unknown query feature\(s\) \['zip'\]"),
    ("POST", "/v1/retrieve", {"features": {"user_id": "1", "age": "old"}}, {}, 400, "must be a finite number"),
    ("POST", "/v1/retrieve", b'{"features": {"user_id": "1", "age": 1e400}}', {}, 400, "finite number"),
    ("POST", "/v1/retrieve", {"features": ["user_id"]}, {}, 400, "'features' must be an object"),
    ("POST", "/v1/retrieve", {"user_id": "1"}, {"Content-Type": "text/plain"}, 415,
     "Content-Type must be application/json"),
    ("POST", "/v1/retrieve", b"x" * (64 * 1024 + 1), {}, 413, "exceeds the limit of 65536"),
    ("POST", "/v1/nope", {"user_id": "1"}, {}, 404, "no such endpoint /v1/nope"),
    ("GET", "/", None, {}, 404, "no such endpoint /"),
    ("GET", "/v1/retrieve", None, {}, 405, "GET not allowed on /v1/retrieve; use POST"),
    ("PUT", "/v1/retrieve", {"user_id": "1"}, {}, 405, "PUT not allowed"),
    ("DELETE", "/readyz", None, {}, 405, "DELETE not allowed on /readyz"),
    ("POST", "/healthz", {"user_id": "1"}, {}, 405, "POST not allowed on /healthz"),
]


@pytest.mark.parametrize("method, path, body, headers, status, reason", BAD_REQUESTS,
                         ids=[f"{i}-{r[4]}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_with_a_reason(shared_service, method, path, body, headers, status, reason):
    service, _ = shared_service
    if isinstance(body, str):
        body = json.dumps(body).encode()
    got, answer, resp_headers = call(service.port, method, path, body, headers)
    assert got == status, answer
    assert set(answer) == {"error"}
    assert re.search(reason, answer["error"]), answer["error"]
    if status == 405:
        assert "Allow" in resp_headers
    # The service is unharmed.
    assert retrieve(service.port, {"user_id": "1"})[0] == 200


def test_missing_content_length_and_oversized_length_are_refused_without_reading(shared_service):
    service, _ = shared_service
    # A huge Content-Length with no body: the answer must come from the header alone
    # (if the server tried to read the body this would hang until the socket timeout).
    head = raw_exchange(service.port, b"POST /v1/retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 100000000\r\n\r\n")
    assert head.startswith("HTTP/1.1 413") and "exceeds the limit" in head
    head = raw_exchange(service.port,
                        b"POST /v1/retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
    assert head.startswith("HTTP/1.1 411") and "Content-Length header required" in head


def test_a_body_shorter_than_its_content_length_times_out_as_408(shared_service, monkeypatch):
    from serving import server

    service, _ = shared_service
    monkeypatch.setattr(server._Handler, "timeout", 0.5)
    head = raw_exchange(service.port, b"POST /v1/retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 100\r\n\r\n{\"user_id\"")
    assert head.startswith("HTTP/1.1 408") and "not received within" in head


def test_keep_alive_connection_serves_several_requests(shared_service):
    service, _ = shared_service
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        for user in ("1", "2", "999", "3"):
            conn.request("POST", "/v1/retrieve", body=json.dumps({"user_id": user}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == (404 if user == "999" else 200), body
    finally:
        conn.close()


def test_a_broken_published_row_is_a_generic_500(shared_service, monkeypatch):
    service, _ = shared_service
    live = service.live()
    monkeypatch.setitem(live.query_table, "broken", {"user_id": "broken", "age": None})
    status, body = retrieve(service.port, {"user_id": "broken"})
    assert status == 500 and body == {"error": "internal error"}


# ---------------------------------------------------------------- readiness and hot reload
def test_empty_store_is_unready_until_a_publish(built, tmp_path, service_on):
    store = str(tmp_path / "empty-store")
    service = service_on(store)
    status, body, _ = call(service.port, "GET", "/readyz")
    wait_for(lambda: "no live version" in (call(service.port, "GET", "/readyz")[1]["error"] or ""),
             what="readyz to say the store is empty")
    status, body, _ = call(service.port, "GET", "/readyz")
    assert status == 503 and body["ready"] is False and "no live version" in body["error"]
    assert call(service.port, "GET", "/healthz")[0] == 200  # alive all along
    status, body = retrieve(service.port, {"user_id": "1"})
    assert status == 503 and "not ready" in body["error"]

    version = publish_version(built, store, seed=7)
    service.wait_ready(timeout=20, version=version)
    status, body, _ = call(service.port, "GET", "/readyz")
    assert status == 200 and body["version"] == version
    status, answer = retrieve(service.port, {"user_id": "1"})
    assert status == 200 and answer["version"] == version


def test_new_version_is_picked_up_and_answers_change(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    service = service_on(store)
    service.wait_ready(timeout=20, version=built.first_version)
    before = retrieve(service.port, {"user_id": "4", "k": 10})[1]
    v2 = publish_version(built, store, seed=11)
    service.wait_ready(timeout=20, version=v2)
    after = retrieve(service.port, {"user_id": "4", "k": 10})[1]
    assert before["version"] == built.first_version and after["version"] == v2
    assert _ids(before) != _ids(after)  # a different query tower, so a different answer
    assert _ids(after) == _ids(Retriever.load(store, version=v2).retrieve({"user_id": "4"}, k=10))
    # A rollback is just another move of CURRENT.
    VersionStore(store).rollback(built.first_version)
    service.wait_ready(timeout=20, version=built.first_version)
    assert _ids(retrieve(service.port, {"user_id": "4", "k": 10})[1]) == _ids(before)


def _corrupt_checksum(store, base):
    folder = clone_version(store, base, "20990101T000000000000Z-bad001")
    with open(os.path.join(folder, "query_table.jsonl"), "a") as fh:
        fh.write(json.dumps({"user_id": "evil", "age": 1.0}) + "\n")
    return os.path.basename(folder), "IntegrityError"


def _no_serving_section(store, base):
    folder = clone_version(store, base, "20990101T000000000000Z-bad002")
    path = os.path.join(folder, "manifest.json")
    manifest = _read_json(path)
    del manifest["serving"]
    _write_json(path, manifest)
    return os.path.basename(folder), "no 'serving' section"


def _wrong_dims_tower(built):
    def make(store, base):
        folder = clone_version(store, base, "20990101T000000000000Z-bad003")
        shutil.rmtree(os.path.join(folder, "query_tower"))
        shutil.copytree(os.path.join(built.query_models["4d"], "query_tower"), os.path.join(folder, "query_tower"))
        rewrite_manifest_files(folder)  # checksums pass: only the warm-up can catch it
        return os.path.basename(folder), "dimsensionality|dimensionality"
    return make


@pytest.mark.parametrize("breakage", ["checksum", "manifest", "warmup"])
def test_broken_new_version_keeps_the_old_one_serving(built, tmp_path, service_on, breakage):
    store = copy_store(built, tmp_path / "store")
    good = built.first_version
    service = service_on(store)
    service.wait_ready(timeout=20, version=good)
    make = {"checksum": _corrupt_checksum, "manifest": _no_serving_section,
            "warmup": _wrong_dims_tower(built)}[breakage]
    bad, reason = make(store, good)
    attempts = service.reload_attempts
    point_current(store, bad)

    info = wait_for(lambda: (lambda s: s if (s["last_reload"] or {}).get("version") == bad else None)(
        call(service.port, "GET", "/v1/version")[1]), what="the reload attempt of the broken version")
    assert info["last_reload"]["ok"] is False
    status, ready, _ = call(service.port, "GET", "/readyz")
    assert status == 200 and ready["ready"] is True and ready["version"] == good
    assert bad in ready["last_reload_error"] and re.search(reason, ready["last_reload_error"]), ready
    status, answer = retrieve(service.port, {"user_id": "2"})
    assert status == 200 and answer["version"] == good

    # No hot loop: many polls later the broken pointer was tried exactly once...
    time.sleep(12 * FAST_POLL)
    assert service.reload_attempts == attempts + 1
    # ...until CURRENT is written again (a new generation), which earns one more try.
    time.sleep(0.02)  # a distinct mtime for the local generation stand-in
    point_current(store, bad)
    wait_for(lambda: service.reload_attempts == attempts + 2, what="a retry after CURRENT was rewritten")
    time.sleep(6 * FAST_POLL)
    assert service.reload_attempts == attempts + 2 and service.live().version == good

    # A good publish afterwards is served and clears the error.
    v2 = publish_version(built, store, seed=11)
    service.wait_ready(timeout=20, version=v2)
    status, ready, _ = call(service.port, "GET", "/readyz")
    assert status == 200 and ready["version"] == v2 and ready["last_reload_error"] is None


def test_first_version_broken_means_unready_with_the_reason(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    bad, _ = _corrupt_checksum(store, built.first_version)
    point_current(store, bad)
    service = service_on(store)
    body = wait_for(lambda: (lambda r: r[1] if r[0] == 503 and "IntegrityError" in r[1]["error"] else None)(
        call(service.port, "GET", "/readyz")), what="readyz to report the broken version")
    assert bad in body["error"] and body["last_reload_error"]


def test_stop_finishes_in_flight_requests_and_refuses_new_ones(built, tmp_path):
    store = copy_store(built, tmp_path / "store")
    service = QueryService(store, port=0, poll_seconds=FAST_POLL)
    service.start()
    service.wait_ready(timeout=20)
    live = service.live()
    original = live.answer_resolved
    entered = threading.Event()

    def slow_answer(*args, **kwargs):
        entered.set()
        time.sleep(0.5)
        return original(*args, **kwargs)

    live.answer_resolved = slow_answer
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(retrieve, service.port, {"user_id": "1"})
        assert entered.wait(5)
        service.stop()  # while the request is in flight
        status, answer = pending.result(timeout=10)
    assert status == 200 and answer["version"] == live.version
    with pytest.raises(OSError):
        call(service.port, "GET", "/healthz", timeout=2)


# ---------------------------------------------------------------- entry points
def test_serve_function_runs_until_stopped(built, tmp_path):
    from serving.server import serve

    store = copy_store(built, tmp_path / "store")
    stop = threading.Event()
    started = []
    result = []
    thread = threading.Thread(target=lambda: result.append(serve(store, port=0, poll_seconds=FAST_POLL,
                                                                 on_started=started.append, stop_event=stop)),
                              daemon=True)
    thread.start()
    service = wait_for(lambda: started and started[0], what="serve() to start")
    service.wait_ready(timeout=20)
    assert retrieve(service.port, {"user_id": "1"})[0] == 200
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive() and result == [0]


def test_cli_parses_serve():
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["serve", "--store", "gs://bucket/store", "--port", "0", "--poll-seconds", "1.5",
                                      "--max-k", "50"])
    assert (args.command, args.store, args.host, args.port, args.poll_seconds, args.max_k) == \
        ("serve", "gs://bucket/store", "127.0.0.1", 0, 1.5, 50)


def test_service_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match="max_k"):
        QueryService(str(tmp_path), max_k=5000)
    with pytest.raises(ValueError, match="poll_seconds"):
        QueryService(str(tmp_path), poll_seconds=0)


def test_max_k_is_the_services_bound(built, tmp_path, service_on):
    service = service_on(copy_store(built, tmp_path / "store"), max_k=5)
    service.wait_ready(timeout=20)
    assert retrieve(service.port, {"user_id": "1", "k": 5})[0] == 200
    status, body = retrieve(service.port, {"user_id": "1", "k": 6})
    assert status == 400 and "1..5" in body["error"]


# ---------------------------------------------------------------- hostile inputs (issue: hardening)
def _raw_retrieve(port: int, body: bytes, host: str = "127.0.0.1") -> tuple[int, str]:
    """POST raw body bytes (JSON escapes such as a lone surrogate survive untouched)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/retrieve", skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8")
    finally:
        conn.close()


@pytest.mark.parametrize("age, reason", [(1e39, "float32"), (-1e39, "float32"), (-1e30, "degenerate"),
                                         (1e30, "degenerate"), (10 ** 400, "finite number")])
def test_numbers_past_the_towers_float32_range_are_a_400(shared_service, age, reason):
    service, _ = shared_service
    body = json.dumps({"features": {"user_id": "42", "age": age}}).encode()
    status, text = _raw_retrieve(service.port, body)
    answer = json.loads(text)  # valid JSON (no NaN) whatever happened
    assert status == 400 and "age" in answer["error"] and reason in answer["error"], answer


def test_float32_edge_values_inside_the_range_answer(shared_service):
    service, _ = shared_service
    for age in (0.0, -0.0, 5e-324, 1e-45, 123456.0):
        status, text = _raw_retrieve(service.port, json.dumps({"features": {"user_id": "1", "age": age}}).encode())
        answer = json.loads(text)
        assert status == 200 and len(answer["items"]) == 10 and len(set(_ids(answer))) == 10, (age, answer)


@pytest.mark.parametrize("body", [b'{"user_id": "\\ud800"}', b'{"features": {"user_id": "\\udfff", "age": 1}}',
                                  b'{"query": "\\ud800"}', b'{"user_id": "a\\ud83dz"}'])
def test_lone_surrogates_are_a_400(shared_service, body):
    service, _ = shared_service
    status, text = _raw_retrieve(service.port, body)
    assert status == 400, text
    assert "error" in json.loads(text)


def test_requests_under_a_foreign_host_name_are_refused(shared_service):
    service, _ = shared_service
    status, text = _raw_retrieve(service.port, b'{"user_id": "1"}', host=f"evil.example:{service.port}")
    assert status == 403 and "evil.example" in json.loads(text)["error"]
    assert _raw_retrieve(service.port, b'{"user_id": "1"}', host=f"localhost:{service.port}")[0] == 200


def test_allow_host_admits_a_named_front_end(built, tmp_path, service_on):
    service = service_on(copy_store(built, tmp_path / "store"), allow_hosts=["retrieval.internal"])
    service.wait_ready(timeout=20)
    assert _raw_retrieve(service.port, b'{"user_id": "1"}', host="retrieval.internal")[0] == 200
    assert _raw_retrieve(service.port, b'{"user_id": "1"}', host="evil.example")[0] == 403


def test_a_version_whose_item_ids_are_short_of_the_index_does_not_load(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    folder = clone_version(store, built.first_version, "20990101T000000000000Z-short1")
    ids_path = os.path.join(folder, "index", "item_ids.txt")
    with open(ids_path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    with open(ids_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines[: len(lines) // 2]) + "\n")
    rewrite_manifest_files(folder)  # checksums agree: only the count check can catch it
    with pytest.raises(ValueError, match=r"item_ids.txt has \d+ ids but the index holds \d+ points"):
        Retriever.load(store, version=os.path.basename(folder))
    service = service_on(store)
    service.wait_ready(timeout=20, version=built.first_version)
    point_current(store, os.path.basename(folder))
    wait_for(lambda: service.status()["problem"], what="the short version to be refused")
    status, answer = retrieve(service.port, {"user_id": "2", "k": 1000})
    assert status == 200 and answer["version"] == built.first_version


def _readyz(service):
    status, body, raw = call(service.port, "GET", "/readyz")
    return status, body


@pytest.mark.parametrize("damage", ["binary", "empty", "deleted", "bom", "huge"])
def test_readyz_reports_a_damaged_current_and_forgets_it_after_recovery(built, tmp_path, service_on, damage):
    store = copy_store(built, tmp_path / "store")
    good = built.first_version
    service = service_on(store)
    service.wait_ready(timeout=20, version=good)
    assert _readyz(service)[1]["problem"] is None
    current = os.path.join(store, CURRENT)
    if damage == "deleted":
        os.unlink(current)
    else:
        data = {"binary": b"\x00\xff\xfe garbage", "empty": b"", "bom": b"\xef\xbb\xbf" + good.encode(),
                "huge": b"x" * (5 << 20)}[damage]
        storage.write_bytes(current, data)
    body = wait_for(lambda: (lambda r: r[1] if r[1].get("problem") else None)(_readyz(service)),
                    what=f"readyz to report the {damage} CURRENT")
    assert body["ready"] is True and body["version"] == good  # still serving from memory
    assert len(json.dumps(body)) < 4096, len(json.dumps(body))
    assert retrieve(service.port, {"user_id": "2"})[0] == 200
    storage.write_text(current, good)  # recovery
    body = wait_for(lambda: (lambda r: r[1] if r[1].get("problem") is None else None)(_readyz(service)),
                    what="readyz to forget the damage")
    assert body["last_reload_error"] is None


def test_readyz_reports_a_deleted_live_folder(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    service = service_on(store)
    service.wait_ready(timeout=20, version=built.first_version)
    shutil.rmtree(os.path.join(store, VERSIONS, built.first_version))
    body = wait_for(lambda: (lambda r: r[1] if r[1].get("problem") else None)(_readyz(service)),
                    what="readyz to report the deleted live folder")
    assert built.first_version in body["problem"] and "deleted" in body["problem"]
    assert retrieve(service.port, {"user_id": "2"})[0] == 200


def test_an_old_reload_error_is_not_shown_after_a_rollback(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    good = built.first_version
    service = service_on(store)
    service.wait_ready(timeout=20, version=good)
    bad, _ = _corrupt_checksum(store, good)
    point_current(store, bad)
    wait_for(lambda: _readyz(service)[1]["last_reload_error"], what="the failed reload")
    point_current(store, good)  # the operator rolls back to what is serving
    body = wait_for(lambda: (lambda r: r[1] if r[1]["last_reload_error"] is None else None)(_readyz(service)),
                    what="the error to clear")
    assert body["problem"] is None and (body["last_reload"] or {}).get("ok", True)


# ---------------------------------------------------------------- coalescing
def test_concurrent_requests_share_tower_calls_and_get_their_own_answers(built, tmp_path, service_on):
    store = copy_store(built, tmp_path / "store")
    service = service_on(store)
    service.wait_ready(timeout=20)
    live = service.live()
    original = live.answer_resolved
    gate = threading.Event()

    def held(*args, **kwargs):  # the first call waits, so the others queue up behind it
        gate.wait(5)
        return original(*args, **kwargs)

    live.answer_resolved = held
    requests = [({"user_id": str(i % N_USERS), "k": 3 + i % 5, "exclude_seen": bool(i % 2)}) for i in range(16)]
    requests.append({"features": {"user_id": "1", "age": -1e30}})  # degenerate: its own 400 only
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(retrieve, service.port, r) for r in requests]
        time.sleep(0.5)
        gate.set()
        results = [f.result(timeout=20) for f in futures]
    coalescer = service._coalescer
    assert coalescer.requests == len(requests) and coalescer.calls < len(requests) / 2, \
        (coalescer.calls, coalescer.requests)
    for request, (status, answer) in zip(requests[:-1], results[:-1]):
        alone = original([live.resolve({"user_id": request["user_id"]})], [request["k"]], [request["exclude_seen"]])[0]
        assert status == 200 and _ids(answer) == _ids(alone) and len(answer["items"]) == request["k"]
    status, answer = results[-1]
    assert status == 400 and "degenerate" in answer["error"]


def test_max_batch_one_answers_each_request_alone(built, tmp_path, service_on):
    service = service_on(copy_store(built, tmp_path / "store"), max_batch=1)
    service.wait_ready(timeout=20)
    assert service._coalescer is None
    status, answer = retrieve(service.port, {"user_id": "2", "k": 4})
    assert status == 200 and len(answer["items"]) == 4
