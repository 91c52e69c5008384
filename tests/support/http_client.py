"""A tiny HTTP client for the query service on 127.0.0.1, and polling until a condition holds."""

from __future__ import annotations

import http.client
import json
import time


FAST_POLL = 0.05


def call(port: int, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
    """One HTTP exchange -> (status, parsed JSON body, response headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None), dict(resp.getheaders())
    finally:
        conn.close()


def retrieve(port: int, payload: dict, timeout: float = 10.0):
    status, body, _ = call(port, "POST", "/v1/retrieve", payload, timeout=timeout)
    return status, body


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
