"""The package as a user gets it: sdist -> wheel -> a fresh environment -> `twotower` in an empty folder.

The editable install the rest of the suite runs on hides what a wheel leaves out (a config
read from the checkout, a package missing from setup.py, a module found only because the repo
is on sys.path). Here the sdist is built from a copy of the tree's packaging inputs, the wheel
from that sdist (so the sdist must be complete), and the wheel installed into a new venv whose
only other path is this environment's site-packages, for the pinned dependencies (nothing is
downloaded; that folder's own .pth files, the editable link to the checkout among them, are not
processed). From an empty folder the installed entry point then generates a tiny shop dataset,
runs the whole pipeline with the shipped ``shop`` config, and answers a query.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.packages import PACKAGES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHIPPED_CONFIGS = {"movielens", "movielens-history", "movielens-ids", "shop", "shop-encoder", "shop-encoder-bce", "shop-encoder-softmax", "synth-interactions"}
#: What setup.py reads besides the packages (MANIFEST.in must bring them into the sdist).
PACKAGING_FILES = ("setup.py", "MANIFEST.in", "README.md", "requirements.txt")
#: Small enough for CI (a few thousand training examples), large enough to beat popularity.
TINY_SHOP = ("--products", "200", "--queries", "300")
TINY_RUN = ("--set", "train.n_epochs=3")


def _run(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _copy_sources(dest: Path) -> Path:
    """The packaging inputs and every top-level package, without caches or build leftovers."""
    for name in PACKAGING_FILES:
        shutil.copy2(REPO / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), the wheel built from the sdist."""
    root = tmp_path_factory.mktemp("build")
    (root / "src").mkdir()
    src = _copy_sources(root / "src")
    dist = root / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", dist], cwd=src, env=env)
    (sdist,) = dist.glob("twotower-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", dist, sdist], cwd=root, env=env)
    (wheel,) = dist.glob("twotower-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; dependencies come from this environment's site-packages."""
    _, wheel = built
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, timeout=120)
    (site,) = root.glob("lib/python3.*/site-packages")
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "_twotower_test_deps.pth").write_text("".join(f"{path}\n" for path in deps))
    # pip itself is one of those dependencies; --ignore-installed: never touch the other environment.
    _run([root / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--ignore-installed", "--no-compile", "--disable-pip-version-check", wheel], cwd=root, env=_env(root))
    return root


def _env(venv_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def test_sdist_and_wheel_carry_the_packages_and_the_shipped_configs(built):
    sdist, wheel = built
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"requirements.txt", "README.md", "setup.py"} <= in_sdist
    assert {f"core/configs/{name}.yaml" for name in SHIPPED_CONFIGS} <= in_sdist
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert set(whl.read(top_level).decode().split()) == set(PACKAGES)
    assert {f"core/configs/{name}.yaml" for name in SHIPPED_CONFIGS} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "datasets/", "bench/"))]


def test_installed_packages_come_from_the_wheel(venv, tmp_path):
    script = ("import sys\nimport " + ", ".join(PACKAGES) + "\nfrom core.configs import shipped_config\n"
              "for name in " + repr(PACKAGES) + ":\n    print(sys.modules[name].__file__)\n"
              "print(shipped_config('shop'))\nprint('\\n'.join(sys.path))")
    out = _run([venv / "bin" / "python", "-c", script], cwd=tmp_path, env=_env(venv)).stdout.splitlines()
    site = str(next(venv.glob("lib/python3.*/site-packages")))
    files = out[:len(PACKAGES) + 1]
    assert all(f.startswith(site) for f in files), files
    assert str(REPO) not in out[len(PACKAGES) + 1:], "the checkout is on the installed interpreter's sys.path"


def test_twotower_from_an_empty_folder_runs_publishes_and_answers(venv, tmp_path):
    """The whole loop with the installed entry point and the shipped config, cwd an empty folder."""
    work = tmp_path / "empty"
    work.mkdir()
    env = _env(venv)
    twotower = venv / "bin" / "twotower"
    _run([twotower, "data", "synth-shop", "--out", "data/shop", *TINY_SHOP], cwd=work, env=env)
    run = _run([twotower, "run", "--config", "shop", *TINY_RUN], cwd=work, env=env, timeout=900).stdout
    assert "published version" in run, run
    # The shipped config's relative paths (data/shop, runs/store, runs/) resolve under the cwd.
    version = (work / "runs" / "store" / "CURRENT").read_text().strip()
    assert version and f"published version {version}" in run
    query = _run([twotower, "query", "--store", "runs/store", "--text", "nike running shoes", "-k", "5"],
                 cwd=work, env=env).stdout.strip().splitlines()
    assert query[0].startswith(f"version {version}") and len(query) == 6, query
