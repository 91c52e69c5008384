"""``twotower serve`` in the component image, behind the handle the swap tests drive
(``port``, ``wait_ready(timeout, version)``, ``stop()``), through the docker SDK."""

from __future__ import annotations

import socket
import time
from typing import Optional

from tests.support.http_client import call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ContainerService:
    """The query service in a container of ``image`` over ``store`` (mounted read-only at
    /store), on the host network at ``port``, as the image's default non-root user."""

    def __init__(self, client, image: str, store: str, poll_seconds: float = 0.05) -> None:
        from docker.types import Mount

        self.port = free_port()
        self.container = client.containers.run(
            image, ["twotower", "serve", "--store", "/store", "--host", "0.0.0.0", "--port", str(self.port),
                    "--poll-seconds", str(poll_seconds)],
            detach=True, network_mode="host", mounts=[Mount("/store", store, type="bind", read_only=True)])
        self.exit_code: Optional[int] = None
        self.stop_seconds: Optional[float] = None

    def wait_ready(self, timeout: float = 60.0, version: Optional[str] = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            self.container.reload()
            if self.container.status == "exited":
                raise AssertionError(f"the container exited: {self.logs()[-2000:]}")
            try:
                status, body, _ = call(self.port, "GET", "/readyz", timeout=2)
            except OSError:
                status, body = None, None
            if status == 200 and (version is None or body["version"] == version):
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready with {version or 'a version'} after {timeout} s: {status} {body}")
            time.sleep(0.05)

    def health(self) -> str:
        """Docker's view of the image HEALTHCHECK: starting, healthy or unhealthy."""
        self.container.reload()
        return self.container.attrs["State"].get("Health", {}).get("Status", "none")

    def stop(self, timeout: int = 5) -> int:
        """``docker stop`` (SIGTERM, SIGKILL after ``timeout`` s); the exit code (137 = killed)."""
        if self.exit_code is None:
            started = time.monotonic()
            self.container.stop(timeout=timeout)
            self.exit_code = self.container.wait(timeout=timeout + 30)["StatusCode"]
            self.stop_seconds = time.monotonic() - started
        return self.exit_code

    def logs(self) -> str:
        return self.container.logs().decode("utf-8", "replace")

    def remove(self) -> None:
        self.container.remove(force=True)
