"""Keep the Dockerfile, the pins and the local environment honest.

There is no Docker engine on these machines, so the image cannot be built here. What
we can prove: the image installs exactly requirements.txt on the same Python minor
version, copies every package setup.py ships, and the environment these tests run in
(built by `make install` from the same file) has exactly those pins.
"""

import re
import sys
from importlib import metadata

from setuptools import find_packages

from tests.conftest import REPO

DESIGN_PINS = {  # the verified set in docs/DESIGN.md
    "tensorflow": r"2\.20\.", "tf-keras": r"2\.20\.", "tensorflow-recommenders": r"0\.7\.7$",
    "scann": r"1\.4\.2$", "apache-beam": r"2\.77\.0$", "kfp": r"2\.17\.0$", "google-cloud-storage": r"3\.",
}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"requirements.txt: {line!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_design_versions_are_pinned():
    pins = _pins()
    for name, pattern in DESIGN_PINS.items():
        assert re.match(pattern, pins[name]), f"{name}=={pins[name]} is not the verified version"


def test_environment_matches_the_pins():
    mismatched = {}
    for name, version in _pins().items():
        installed = metadata.version(name)
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"installed packages differ from requirements.txt: {mismatched}"


def test_dockerfile_builds_the_same_environment():
    docker = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)", docker, re.M)
    assert base, "Dockerfile must start from an official python:X.Y image"
    assert (int(base.group(1)), int(base.group(2))) == sys.version_info[:2]
    assert re.search(r"pip install .*-r requirements\.txt", docker)
    assert "TF_USE_LEGACY_KERAS=1" in docker
    top_level = {p.split(".")[0] for p in find_packages(str(REPO), include=[
        "core*", "datagen*", "features*", "trainer*", "indexer*", "serving*", "reports*", "ui*", "components*",
        "pipelines*"])}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", docker, re.M))
    assert top_level <= copied, f"Dockerfile does not copy {sorted(top_level - copied)}"


def test_console_script_is_declared():
    setup_py = (REPO / "setup.py").read_text()
    assert '"twotower=pipelines.cli:main"' in setup_py
    assert metadata.entry_points(group="console_scripts", name="twotower")
