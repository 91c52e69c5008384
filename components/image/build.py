"""Build the component image from the repository's Dockerfile (``twotower image build``).

The build context is the repository filtered by its ``.dockerignore`` (docker's own matcher,
from the docker SDK), streamed to the engine as a tar. The machine's CA bundle, when there is
one, is added to that tar as ``build-ca.crt`` for pip in the Dockerfile's dependency stage to
trust; the final stage never copies it, and nothing of it lands in the repository.

Bases (components/image/base.py): ``auto`` picks ``python:3.11-slim`` when it is here, else
the Debian-built local base, built once; Beam's SDK image likewise, else a stand-in.

The engine's layer cache makes a rebuild after a code edit redo only the code layer and the
package install; dependency layers are reused while the requirements files are unchanged.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from components.image.base import choose_base_image, choose_beam_boot_image
from components.image.engine import ensure_engine
from core.config import DEFAULT_IMAGE as DEFAULT_TAG

REPO = Path(__file__).resolve().parents[2]
#: The file pip trusts in the dependency stage (the Dockerfile's COPY names it).
CA_IN_CONTEXT = "build-ca.crt"
#: CA bundles looked for, in order, when none is named: pip's own setting, then the system's.
CA_CANDIDATES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class ImageBuildError(RuntimeError):
    """The engine refused or the build failed; the message carries the failing step's output."""


@dataclass(frozen=True)
class BuiltImage:
    """What a build made: ``tag`` and ``image_id`` (``sha256:...``), its size in bytes, the
    bases it used and the build's wall seconds."""

    tag: str
    image_id: str
    size_bytes: int
    base_image: str
    beam_boot_image: str
    seconds: float


def context_files(root: Path = REPO) -> list[str]:
    """The repository files the build context holds (paths relative to ``root``, sorted),
    after ``.dockerignore``, as the engine would see them."""
    from docker.utils.build import exclude_paths

    patterns = _dockerignore(root)
    return sorted(p for p in exclude_paths(str(root), patterns, dockerfile="Dockerfile")
                  if (root / p).is_file())


def find_ca_bundle() -> str:
    """The CA bundle pip on this machine trusts ('' when none is set or present)."""
    for name in CA_CANDIDATES:
        path = os.environ.get(name, "")
        if path and os.path.isfile(path):
            return path
    return SYSTEM_CA_BUNDLE if os.path.isfile(SYSTEM_CA_BUNDLE) else ""


def build_context(root: Path = REPO, ca_bundle: str = "") -> bytes:
    """The build context as an uncompressed tar: :func:`context_files`, plus the CA bundle as
    :data:`CA_IN_CONTEXT` when given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in context_files(root):
            tar.add(str(root / rel), arcname=rel, recursive=False, filter=_normalised)
        if ca_bundle:
            tar.add(ca_bundle, arcname=CA_IN_CONTEXT, recursive=False, filter=_normalised)
    return buf.getvalue()


def build_image(tag: str = DEFAULT_TAG, base_image: str = "auto", beam_boot_image: str = "auto",
                accelerator: str = "cpu", ca_bundle: str | None = None, no_cache: bool = False,
                verbose: bool = False, log=print) -> BuiltImage:
    """Build the Dockerfile into ``tag`` and return what was built.

    Args:
        base_image: ``auto`` (see the module docstring) or an image name.
        ca_bundle: a PEM file pip should trust during the build; None finds the machine's
            (:func:`find_ca_bundle`), '' sends none.

    Raises:
        EngineUnavailable: no engine (components.image.engine says why).
        BaseImageError: a base could not be found or made.
        ImageBuildError: a build step failed (its output's tail in the message).
    """
    client = ensure_engine(log=log)
    started = time.monotonic()
    base = choose_base_image(client, base_image, log=log)
    boot = choose_beam_boot_image(client, beam_boot_image, log=log)
    ca = find_ca_bundle() if ca_bundle is None else ca_bundle
    context = build_context(REPO, ca)
    log(f"building {tag} on {base} ({len(context) / 1e6:.1f} MB context"
        + (f", pip trusting {ca}" if ca else "") + ")")
    args = {"BASE_IMAGE": base, "BEAM_BOOT_IMAGE": boot, "ACCELERATOR": accelerator}
    image_id, tail = None, []
    stream = client.api.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, buildargs=args,
                              network_mode="host", rm=True, forcerm=True, nocache=no_cache, decode=True,
                              pull=False)
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(f"building {tag} failed: {chunk['error'].strip()}\n" + "".join(tail[-30:]))
        text = chunk.get("stream", "")
        if text:
            tail.append(text)
            if verbose:
                log(text.rstrip("\n"))
            elif text.startswith("Step "):
                log("  " + text.strip())
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    image = client.images.get(tag)
    if image_id and image.id != image_id:
        raise ImageBuildError(f"{tag} names {image.id}, not the {image_id} just built (a concurrent build?)")
    seconds = time.monotonic() - started
    built = BuiltImage(tag=tag, image_id=image.id, size_bytes=int(image.attrs.get("Size", 0)), base_image=base,
                       beam_boot_image=boot, seconds=seconds)
    log(f"built {tag} ({built.image_id[:19]}, {built.size_bytes / 1e9:.2f} GB) in {seconds:.0f} s")
    return built


def _dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner and times fixed, so an unchanged file gives the same layer checksum."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if info.isfile():
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


__all__ = ["BuiltImage", "ImageBuildError", "DEFAULT_TAG", "build_image", "build_context", "context_files",
           "find_ca_bundle"]
