"""Hot swaps under load, against any running query service (in-process or in a container).

Sequence of live versions: v0 (initial) -> v1 (publish) -> v0 (rollback) -> v2 -> v3
(publishes), each published version with its own query tower so answers differ. Checks:
no request fails, every answer equals what the version it names answers in-process,
each client sees versions in the order CURRENT moved (never back to an older state),
and the service ends on the last published version. Latency p50/p99 over all requests
is printed (tiny test store: 60 items, 8 dims, brute-force index).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from core.store import VersionStore
from serving.retriever import Retriever
from tests.support.http_client import call
from tests.support.stores import publish_version

#: The query-tower seeds of the versions the swaps publish (build the store with them).
SWAP_SEEDS = (11, 13, 17)
N_CLIENTS = 4
MAX_SECONDS = 30.0  # hard cap on the client loops whatever happens
DWELL = 0.5  # seconds each live version is left serving before CURRENT moves again
REQUESTS = [
    ({"user_id": "0"}, 10, False),
    ({"user_id": 5}, 5, True),
    ({"features": {"user_id": "stranger", "age": 37.5}}, 8, False),
    ({"user_id": "11"}, 20, True),
    ({"features": {"user_id": "3", "age": 23.0}}, 3, True),
]


def _payload(i: int) -> dict:
    request, k, exclude = REQUESTS[i]
    return {**request, "k": k, "exclude_seen": exclude}


def _is_subsequence(seen: list[str], sequence: list[str]) -> bool:
    it = iter(sequence)
    return all(any(v == s for s in it) for v in seen)


def _client(port: int, stop: threading.Event, deadline: float, offset: int, log: list, failures: list) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n = offset
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            i = n % len(REQUESTS)
            n += 1
            body = json.dumps(_payload(i))
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/retrieve", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
            except Exception as exc:  # recorded, then the test fails on it
                failures.append(f"request {i}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            latency = time.perf_counter() - t0
            if resp.status != 200:
                failures.append(f"request {i}: HTTP {resp.status}: {raw[:200]!r}")
                continue
            answer = json.loads(raw)
            log.append((answer["version"], i, [it["item_id"] for it in answer["items"]], answer["scores"], latency))
    finally:
        conn.close()


def swaps_under_load(built, service, label: str = "in-process") -> None:
    """Hammer ``service`` with :data:`N_CLIENTS` clients while CURRENT of ``built.store`` moves
    4 times; assert what the module docstring says (the caller built the store with
    ``extra_query_seeds=SWAP_SEEDS`` and started the service on it, polling fast).

    ``service``: ``port``, ``wait_ready(timeout, version)`` and ``stop()`` (a
    serving.server.QueryService, or a container wrapped the same way); stopped on the way out.
    """
    store = built.store
    v0 = built.first_version
    stop = threading.Event()
    logs = [[] for _ in range(N_CLIENTS)]
    failures: list[str] = []
    threads = []
    try:
        service.wait_ready(timeout=30, version=v0)
        deadline = time.monotonic() + MAX_SECONDS
        threads = [threading.Thread(target=_client, args=(service.port, stop, deadline, c, logs[c], failures),
                                    name=f"client-{c}", daemon=True) for c in range(N_CLIENTS)]
        for t in threads:
            t.start()
        sequence = [v0]
        time.sleep(DWELL)
        steps = [("publish", SWAP_SEEDS[0]), ("rollback", v0), ("publish", SWAP_SEEDS[1]),
                 ("publish", SWAP_SEEDS[2])]
        for action, arg in steps:
            if action == "publish":
                target = publish_version(built, store, seed=arg)
            else:
                VersionStore(store).rollback(arg)
                target = arg
            service.wait_ready(timeout=20, version=target)
            sequence.append(target)
            time.sleep(DWELL)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        status, ready, _ = call(service.port, "GET", "/readyz")
        service.stop()
    assert not any(t.is_alive() for t in threads)

    assert failures == []
    last = sequence[-1]
    assert status == 200 and ready["version"] == last and ready["last_reload_error"] is None

    # What each version answers, computed in-process from the store.
    expected = {}
    for version in set(sequence):
        retriever = Retriever.load(store, version=version)
        expected[version] = [retriever.retrieve(r, k=k, exclude_seen=ex) for r, k, ex in REQUESTS]
    # The towers differ, so a mixed-up version would show.
    tops = {v: tuple(tuple(it["item_id"] for it in a["items"]) for a in answers) for v, answers in expected.items()}
    assert len(set(tops.values())) == len(tops)

    latencies = []
    for c, log in enumerate(logs):
        assert len(log) > 20, f"client {c} made only {len(log)} requests"
        for version, i, items, scores, latency in log:
            want = expected[version][i]
            assert items == [it["item_id"] for it in want["items"]], (c, version, i)
            np.testing.assert_allclose(scores, want["scores"], atol=1e-5)
            latencies.append(latency)
        observed = [entry[0] for entry in log]
        runs = [v for j, v in enumerate(observed) if j == 0 or v != observed[j - 1]]
        assert _is_subsequence(runs, sequence), (c, runs, sequence)
        assert observed[-1] == last
    assert {entry[0] for log in logs for entry in log} == set(sequence)  # every live version was served

    ms = np.asarray(latencies) * 1000
    print(f"\nswap test, {label} (tiny store: 60 items, 8 dims, brute force; {N_CLIENTS} clients, keep-alive): "
          f"{len(ms)} requests, {len(sequence) - 1} swaps, p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.2f} ms")
