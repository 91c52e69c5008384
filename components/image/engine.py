"""Find, or start, the Docker engine the component image is built and run on.

The engine is reached through the ``docker`` Python SDK (what kfp.local's DockerRunner uses
too), at ``DOCKER_HOST`` or the default unix socket. Where none answers and this process is
root with Debian's ``dockerd`` installed (``apt-get install docker.io``), :func:`ensure_engine`
starts one the way a sandbox without a network bridge needs it: ``--iptables=false
--bridge=none``, on the overlay2 storage driver, else vfs where the kernel cannot mount overlay
(vfs copies the whole image for every layer and container: measured here, 1 min 50 s to start
one container of the 3.2 GB image, against about a second on overlay2). Containers then use
the host network (``network_mode="host"``).

Every refusal comes back as :class:`EngineUnavailable` with the reason in words, which the CLI
prints and the tests skip with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Optional

#: Where a dockerd started here writes its log (read when it fails to come up).
DOCKERD_LOG = "/var/log/twotower-dockerd.log"
#: The flags a dockerd started here runs with: no bridge or iptables in a sandboxed VM.
DOCKERD_FLAGS = ("--iptables=false", "--bridge=none")
#: Storage drivers tried in order: overlay2 shares layers; vfs works everywhere, slowly.
STORAGE_DRIVERS = ("overlay2", "vfs")
#: Seconds to wait for a started dockerd to answer.
START_TIMEOUT_S = 60.0


class EngineUnavailable(RuntimeError):
    """No Docker engine can be used here; the message says why and what would fix it."""


def docker_client(timeout_s: float = 600.0):
    """A ``docker.DockerClient`` on an engine that answers ``ping``.

    Raises:
        EngineUnavailable: the SDK is missing or no engine answers.
    """
    try:
        import docker
    except ImportError:
        raise EngineUnavailable("the `docker` Python package is not installed (pip install docker)") from None
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - docker-py raises DockerException, requests' and OSError kinds
        raise EngineUnavailable(f"no Docker engine answers at {os.environ.get('DOCKER_HOST') or 'the default socket'}: "
                                f"{_first_line(exc)}") from None


def ensure_engine(start: bool = True, log=print):
    """A client on a running engine, starting ``dockerd`` first when none answers and ``start``.

    Starting needs root and a ``dockerd`` on PATH; the daemon is left running for later
    calls (CI starts it once per machine).

    Raises:
        EngineUnavailable: naming why none could be used or started.
    """
    try:
        return docker_client()
    except EngineUnavailable as first:
        if not start:
            raise
        reason = _why_not_startable()
        if reason:
            raise EngineUnavailable(f"{first}; and cannot start one: {reason}") from None
    problems = []
    for driver in STORAGE_DRIVERS:
        try:
            return _start_dockerd(driver, log)
        except EngineUnavailable as exc:
            problems.append(f"{driver}: {exc}")
    raise EngineUnavailable("dockerd would not start: " + "; ".join(problems))


def _start_dockerd(driver: str, log):
    flags = (f"--storage-driver={driver}", *DOCKERD_FLAGS)
    log(f"starting dockerd ({' '.join(flags)}), log {DOCKERD_LOG}")
    os.makedirs(os.path.dirname(DOCKERD_LOG), exist_ok=True)
    with open(DOCKERD_LOG, "ab") as out:
        # A session of its own: the daemon outlives this command (and its Ctrl-C).
        proc = subprocess.Popen([shutil.which("dockerd"), *flags], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineUnavailable(f"exited with code {proc.returncode}: {_log_tail()}")
        try:
            return docker_client()
        except EngineUnavailable:
            time.sleep(0.5)
    proc.terminate()
    raise EngineUnavailable(f"did not answer within {START_TIMEOUT_S:.0f} s: {_log_tail()}")


def engine_or_reason(start: bool = True) -> tuple[Optional[object], str]:
    """``(client, "")`` or ``(None, why not)``: for callers that skip rather than fail."""
    try:
        return ensure_engine(start=start, log=lambda _msg: None), ""
    except EngineUnavailable as exc:
        return None, str(exc)


def _why_not_startable() -> str:
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (as root: apt-get install docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return ""


def _log_tail(lines: int = 5) -> str:
    try:
        with open(DOCKERD_LOG, "rb") as f:
            tail = f.read()[-4000:].decode("utf-8", "replace").strip().splitlines()[-lines:]
        return " | ".join(tail) or "(empty log)"
    except OSError:
        return "(no log)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
