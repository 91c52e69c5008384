"""The base images the component image is built on, made here when no registry can serve them.

- The Python base: the Dockerfile's default ``python:3.11-slim`` for users with a registry.
  Without one (these machines), :data:`LOCAL_BASE_IMAGE` is built from Debian's own packages:
  ``debootstrap --variant=minbase`` of bookworm with Python 3.11, venv, pip and the CA
  certificates package, imported as an image (about 45 s, a few hundred MB).
- Beam's worker boot program: the Dockerfile copies ``/opt/apache/beam`` from Beam's SDK image
  (what a Dataflow worker starts). Without a registry that image cannot be had, so
  :data:`BEAM_BOOT_ABSENT_IMAGE` stands in: a one-file image whose ``/opt/apache/beam`` holds a
  note saying the boot program is missing. The image entrypoint then refuses to act as a
  Dataflow worker, and says why; every other use of the image is unaffected.

Both are made only when absent, and kept (the engine's image store is the cache).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

from components.image.engine import EngineUnavailable

#: The Debian-built Python base (bookworm's python3.11, as in python:3.11-slim's major.minor).
LOCAL_BASE_IMAGE = "twotower-base:bookworm-python3.11"
#: The Dockerfile's default base, for machines that can pull it.
REGISTRY_BASE_IMAGE = "python:3.11-slim"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3.11", "python3.11-venv", "python3-pip", "ca-certificates")
#: Beam's SDK image for the pinned Beam and Python versions (the Dockerfile's default).
BEAM_BOOT_IMAGE = "apache/beam_python3.11_sdk:2.77.0"
BEAM_BOOT_ABSENT_IMAGE = "twotower-beam-boot-absent:2.77.0"
#: The note the stand-in carries where the boot program would be; the entrypoint prints it.
BEAM_BOOT_ABSENT_NOTE = "opt/apache/beam/BOOT_PROGRAM_ABSENT"


class BaseImageError(RuntimeError):
    """A base image could not be found or made; the message says which and why."""


def image_present(client, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def choose_base_image(client, requested: str = "auto", log=print) -> str:
    """The Python base to build on: ``requested``, or with ``auto`` the registry's
    ``python:3.11-slim`` when it is already here, else the local Debian base (built if absent).

    A named image that is not here is left to the build, which pulls it (a registry needed).
    """
    if requested != "auto":
        if requested == LOCAL_BASE_IMAGE and not image_present(client, requested):
            build_local_base(client, log=log)
        return requested
    if image_present(client, REGISTRY_BASE_IMAGE):
        return REGISTRY_BASE_IMAGE
    if not image_present(client, LOCAL_BASE_IMAGE):
        build_local_base(client, log=log)
    return LOCAL_BASE_IMAGE


def choose_beam_boot_image(client, requested: str = "auto", log=print) -> str:
    """Beam's SDK image when it is here (or named), else the stand-in (made if absent)."""
    if requested != "auto":
        return requested
    if image_present(client, BEAM_BOOT_IMAGE):
        return BEAM_BOOT_IMAGE
    if not image_present(client, BEAM_BOOT_ABSENT_IMAGE):
        log(f"{BEAM_BOOT_IMAGE} is not here: using {BEAM_BOOT_ABSENT_IMAGE} (the image cannot be a Dataflow worker)")
        _import_tar(client, _boot_absent_tar(), BEAM_BOOT_ABSENT_IMAGE)
    return BEAM_BOOT_ABSENT_IMAGE


def build_local_base(client, log=print, mirror: str = "") -> float:
    """debootstrap a minimal bookworm with Python 3.11 and import it as :data:`LOCAL_BASE_IMAGE`.

    Needs root and Debian's ``debootstrap``; returns the seconds it took.

    Raises:
        BaseImageError: naming what is missing or the command that failed (with its output's tail).
    """
    if shutil.which("debootstrap") is None:
        raise BaseImageError(f"{LOCAL_BASE_IMAGE} is not here and debootstrap is not installed "
                             "(as root: apt-get install debootstrap), or pass --base-image NAME")
    if os.geteuid() != 0:
        raise BaseImageError(f"{LOCAL_BASE_IMAGE} is not here and debootstrap needs root to build it")
    started = time.monotonic()
    log(f"building {LOCAL_BASE_IMAGE} from Debian {DEBIAN_SUITE} packages ({', '.join(DEBIAN_PACKAGES)})")
    with tempfile.TemporaryDirectory(prefix="twotower-base-") as tmp:
        root = os.path.join(tmp, "root")
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES), DEBIAN_SUITE, root]
        if mirror:
            cmd.append(mirror)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stdout.strip().splitlines()[-5:])
            raise BaseImageError(f"debootstrap failed (exit {done.returncode}): {tail}")
        # Package caches are dead weight in every image built on this one.
        for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
            path = os.path.join(root, folder)
            for name in os.listdir(path) if os.path.isdir(path) else []:
                if name not in ("partial", "lock"):
                    target = os.path.join(path, name)
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        tar_path = os.path.join(tmp, "root.tar")
        with tarfile.open(tar_path, "w") as tar:
            tar.add(root, arcname=".")
        _import_tar(client, tar_path, LOCAL_BASE_IMAGE, changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    seconds = time.monotonic() - started
    log(f"built {LOCAL_BASE_IMAGE} in {seconds:.0f} s")
    return seconds


def _boot_absent_tar() -> bytes:
    note = (b"This image was built without Apache Beam's worker boot program (its SDK image could not be\n"
            b"pulled here), so it cannot start a Dataflow worker. Build on a machine with a registry:\n"
            b"twotower image build (it uses " + BEAM_BOOT_IMAGE.encode() + b" when present).\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("opt", "opt/apache", "opt/apache/beam"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo(BEAM_BOOT_ABSENT_NOTE)
        info.size, info.mode = len(note), 0o644
        tar.addfile(info, io.BytesIO(note))
    return buf.getvalue()


def _import_tar(client, tar, name: str, changes: list[str] | None = None) -> None:
    """Import a root filesystem tar (a path or bytes) as image ``name`` (``repo:tag``)."""
    repository, tag = name.rsplit(":", 1)
    try:
        if isinstance(tar, bytes):
            client.api.import_image_from_data(tar, repository=repository, tag=tag, changes=changes)
        else:
            client.api.import_image_from_file(tar, repository=repository, tag=tag, changes=changes)
    except Exception as exc:  # noqa: BLE001 - docker-py's APIError and connection errors alike
        raise EngineUnavailable(f"could not import {name}: {str(exc).splitlines()[0]}") from None
    if not image_present(client, name):
        raise BaseImageError(f"importing {name} reported success but the image is not there")
