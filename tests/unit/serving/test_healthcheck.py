"""serving.healthcheck, the image's HEALTHCHECK, against the real query service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving import healthcheck
from serving.server import QueryService
from tests.conftest import REPO
from tests.support.stores import build_store


@pytest.fixture
def health_file(tmp_path, monkeypatch):
    path = tmp_path / "serve.json"
    monkeypatch.setenv(healthcheck.HEALTH_FILE_ENV, str(path))
    return path


def _service(store):
    service = QueryService(store, host="0.0.0.0", port=0, poll_seconds=0.05)
    service.start()
    return service


def test_no_service_in_the_container_passes(monkeypatch, tmp_path):
    monkeypatch.delenv(healthcheck.HEALTH_FILE_ENV, raising=False)
    assert healthcheck.check()[0] == 0
    monkeypatch.setenv(healthcheck.HEALTH_FILE_ENV, str(tmp_path / "absent.json"))
    assert healthcheck.check() == (0, "no query service in this container")


def test_an_unready_service_fails_and_a_ready_one_passes(health_file, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    service = _service(str(empty))
    try:
        assert healthcheck.write_address(service.url) == str(health_file)
        code, why = healthcheck.check()
        assert code == 1 and "503" in why  # listening, but no version to serve
    finally:
        service.stop()
    built = build_store(tmp_path / "built")
    service = _service(built.store)
    try:
        service.wait_ready(timeout=30)
        healthcheck.write_address(service.url)  # 0.0.0.0 in the file: the check asks 127.0.0.1
        assert json.loads(health_file.read_text())["url"].startswith("http://0.0.0.0:")
        assert healthcheck.check() == (0, f"http://127.0.0.1:{service.port}/readyz: ready")
        # As Docker runs it: a fresh interpreter, its exit code.
        out = subprocess.run([sys.executable, "-m", "serving.healthcheck"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        service.stop()
    code, why = healthcheck.check()  # the file still names the stopped service
    assert code == 1 and "refused" in why.lower()
    healthcheck.remove_address()
    assert not health_file.exists() and healthcheck.check()[0] == 0


def test_an_unreadable_address_file_fails(health_file):
    health_file.write_text("{not json")
    assert healthcheck.check()[0] == 1
