"""Keep the pins and the local environment honest: the verified versions are pinned, and the
environment these tests run in (built by `make install` from requirements.txt) has exactly
those pins. The image installs the same file (tests/unit/components/image/test_context.py;
tests/integration/test_image.py builds and runs it).
"""

import re
from importlib import metadata

from tests.conftest import REPO

DESIGN_PINS = {  # the verified set in docs/DESIGN.md
    "tensorflow": r"2\.20\.", "tf-keras": r"2\.20\.", "tensorflow-recommenders": r"0\.7\.7$",
    "scann": r"1\.4\.2$", "apache-beam": r"2\.77\.0$", "kfp": r"2\.17\.0$", "google-cloud-storage": r"3\.",
}


def _pins(filename: str = "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in (REPO / filename).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{filename}: {line!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_design_versions_are_pinned():
    pins = _pins()
    for name, pattern in DESIGN_PINS.items():
        assert re.match(pattern, pins[name]), f"{name}=={pins[name]} is not the verified version"


def test_environment_matches_the_pins():
    # requirements-encoder.txt: installed with --no-deps beside requirements.txt (the Makefile).
    for filename in ("requirements.txt", "requirements-encoder.txt"):
        mismatched = {}
        for name, version in _pins(filename).items():
            installed = metadata.version(name)
            if installed != version:
                mismatched[name] = (version, installed)
        assert not mismatched, f"installed packages differ from {filename}: {mismatched}"


def test_console_script_is_declared():
    setup_py = (REPO / "setup.py").read_text()
    assert '"twotower=pipelines.cli:main"' in setup_py
    assert metadata.entry_points(group="console_scripts", name="twotower")
