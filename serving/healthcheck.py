"""The component image's HEALTHCHECK: is the query service in this container ready?

``twotower serve`` writes its address to the file named by ``TWOTOWER_HEALTH_FILE`` (the image
sets it) once it listens, and removes it on shutdown. This check asks that address's
``/readyz``: exit 0 when it answers 200 (a version is loaded), 1 otherwise. A container that
runs no service (a pipeline step, a CLI command) has no such file and passes.

Standard library only: it runs every few seconds, so it must start fast (no TensorFlow).

    python -m serving.healthcheck
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

#: The environment variable naming the address file (unset: nothing is written or checked).
HEALTH_FILE_ENV = "TWOTOWER_HEALTH_FILE"
TIMEOUT_S = 4.0


def write_address(url: str) -> str:
    """Record the service's ``url`` for the check; returns the file written ('' when unset)."""
    path = os.environ.get(HEALTH_FILE_ENV, "")
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"url": url, "pid": os.getpid()}, f)
        os.replace(tmp, path)  # the check never reads half a file
    return path


def remove_address() -> None:
    path = os.environ.get(HEALTH_FILE_ENV, "")
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def check() -> tuple[int, str]:
    """``(exit code, one line saying why)``."""
    path = os.environ.get(HEALTH_FILE_ENV, "")
    if not path or not os.path.exists(path):
        return 0, "no query service in this container"
    try:
        with open(path) as f:
            url = json.load(f)["url"]
    except (OSError, ValueError, KeyError) as exc:
        return 1, f"unreadable {path}: {exc}"
    parts = urllib.parse.urlsplit(url)
    host = "127.0.0.1" if parts.hostname in ("0.0.0.0", "::", None) else parts.hostname
    target = f"http://{host}:{parts.port}/readyz"
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S) as response:
            return (0, f"{target}: ready") if response.status == 200 else (1, f"{target}: {response.status}")
    except urllib.error.HTTPError as exc:
        return 1, f"{target}: {exc.code} {exc.read()[:200].decode('utf-8', 'replace')}"
    except (OSError, urllib.error.URLError) as exc:
        return 1, f"{target}: {exc}"


if __name__ == "__main__":
    code, why = check()
    print(why)
    sys.exit(code)
