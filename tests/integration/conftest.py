"""Fixtures shared by the whole-pipeline tests: one subprocess-runner run of the embedded default
(the local-pipeline tests assert on it; the docker-runner test compares with it) and the
component image, built once per session from the working tree (skipped, with the reason,
where no Docker engine can run)."""

from __future__ import annotations

import pytest

from tests.support.shop_runs import shop_config, shop_dataset


@pytest.fixture(scope="session")
def shop_data(tmp_path_factory):
    return shop_dataset(tmp_path_factory.mktemp("shop-data") / "shop")


@pytest.fixture(scope="session")
def shop_subprocess_run(tmp_path_factory, shop_data):
    """``(root, config, summary)`` of the whole pipeline on the subprocess runner."""
    from pipelines.local_run import run_local

    root = tmp_path_factory.mktemp("e2e")
    config = shop_config(shop_data, root)
    return root, config, run_local(config)


@pytest.fixture(scope="session")
def component_image():
    """``(docker client, BuiltImage)``: the Dockerfile built now (the layer cache makes an
    unchanged tree a matter of seconds), so the tests never run a stale image."""
    from components.image.build import build_image
    from components.image.engine import engine_or_reason

    client, reason = engine_or_reason()
    if client is None:
        pytest.skip(f"no Docker engine: {reason}")
    return client, build_image(log=lambda line: print(line, flush=True))
