"""TensorFlow's process environment is set once, by ``core`` at package import.

TFRS needs Keras 2, which TensorFlow picks only if ``TF_USE_LEGACY_KERAS=1`` is set before its
first import; when each module set it before its own TF import, import order decided between
Keras 2 and 3. Each check runs in a fresh interpreter (this suite's conftest sets the variables
itself, so only a new process shows what the packages do on their own).
"""

import os
import subprocess
import sys

import pytest

from core import environment
from tests.conftest import REPO
from tests.support.packages import PACKAGES

TF_VARIABLES = ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")


def _run(script: str, **extra_env: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter at the repo root, with neither TF variable inherited."""
    env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_packages_list_is_complete():
    """A new top-level package must join PACKAGES (and so import core first)."""
    found = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert found == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_any_package_selects_keras_2(package):
    proc = _run(f"import os, {package}; print(os.environ['TF_USE_LEGACY_KERAS'])")
    assert proc.stdout.strip() == "1"


def test_tensorflow_after_serving_retriever_is_keras_2():
    """The query path imports TF lazily; whatever module comes first, tf.keras is Keras 2."""
    # tf.keras is a module of tf_keras (Keras 2) or of keras (Keras 3); print that package's version.
    proc = _run("import sys\nimport serving.retriever\nimport tensorflow as tf\n"
                "print(sys.modules[tf.keras.__name__.partition('.')[0]].__version__)")
    assert proc.stdout.strip().splitlines()[-1].startswith("2."), proc.stdout


def test_user_set_values_win():
    proc = _run("import os, core; print(os.environ['TF_USE_LEGACY_KERAS'], os.environ['TF_CPP_MIN_LOG_LEVEL'])",
                TF_USE_LEGACY_KERAS="0", TF_CPP_MIN_LOG_LEVEL="1")
    assert proc.stdout.split() == ["0", "1"]


@pytest.mark.parametrize("driver, level", [(True, "2"), (False, "3")])
def test_log_level_follows_the_gpu_driver(monkeypatch, tmp_path, driver, level):
    """3 hides the cuInit error line a GPU-less machine prints; with a GPU, warnings stay visible."""
    driver_file = tmp_path / "version"
    if driver:
        driver_file.write_text("NVRM version: test\n")
    monkeypatch.setattr(environment, "NVIDIA_DRIVER_FILE", str(driver_file))
    for name in TF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    environment.configure()
    environment.configure()  # idempotent
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == level


@pytest.mark.skipif(os.path.exists(environment.NVIDIA_DRIVER_FILE), reason="a GPU machine: TF finds its driver")
def test_no_cuinit_error_without_a_gpu():
    proc = _run("import core\nimport tensorflow")
    assert "cuInit" not in proc.stderr, proc.stderr


def test_only_core_environment_sets_the_tf_variables():
    """Production code sets them in one place; a second setdefault would bring import order back."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if any(name in text for name in TF_VARIABLES):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == ["core/environment.py"]


def test_user_errors_do_not_import_beam():
    """Mapping an error to its one-line message must not pay for (or log from) Apache Beam."""
    proc = _run("import sys, pipelines.commands\npipelines.commands.user_errors()\n"
                "print('apache_beam' in sys.modules)")
    assert proc.stdout.strip() == "False"
