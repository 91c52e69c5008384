"""twotower: a production two-tower retrieval pipeline (KFP v2, Beam, TFRS, ScaNN)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    """Runtime pins live in requirements.txt (the verified set in docs/DESIGN.md)."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


setup(
    name="twotower",
    version="0.1.0",
    description="Two-tower retrieval pipeline: ingest, Beam transform, TFRS training, ScaNN index, publish, serve",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["core*", "datagen*", "features*", "trainer*", "indexer*", "evaluation*",
                                    "publishing*", "run_records*",
                                    "serving*", "reports*", "ui*", "components*", "pipelines*"]),
    # The shipped run configs (core/configs/*.yaml) are package data: `twotower run --config shop`
    # reads them through importlib.resources, from any folder. MANIFEST.in puts them (and the
    # requirements.txt this file reads) in the sdist.
    package_data={"core.configs": ["*.yaml"]},
    install_requires=_requirements(),
    entry_points={"console_scripts": ["twotower=pipelines.cli:main"]},
)
