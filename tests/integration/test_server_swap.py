"""Hot swaps under load against the in-process query service (tests/support/swap_load.py says
what is checked; tests/integration/test_image.py runs the same test against `serve` in the image),
and the CLI's `serve` stopping cleanly on SIGTERM.
"""

from __future__ import annotations

import time

import pytest

from serving.server import QueryService
from tests.support.http_client import call
from tests.support.stores import build_store
from tests.support.swap_load import SWAP_SEEDS, swaps_under_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_swaps_under_load_never_fail_or_mix_versions(tmp_path):
    built = build_store(tmp_path, extra_query_seeds=SWAP_SEEDS)
    service = QueryService(built.store, port=0, poll_seconds=0.05)
    service.start()
    swaps_under_load(built, service)


def test_cli_serve_answers_then_stops_cleanly_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    built = build_store(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--store", built.store, "--port", "0",
                             "--poll-seconds", "0.2"], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "twotower serve: listening on http://127.0.0.1:PORT ..."
        assert "listening on http://127.0.0.1:" in line, (line, proc.poll())
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        deadline = time.monotonic() + 60
        while call(port, "GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.1)
        status, answer, _ = call(port, "POST", "/v1/retrieve", {"user_id": "1", "k": 3})
        assert status == 200 and answer["version"] == built.first_version and len(answer["items"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "received SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
