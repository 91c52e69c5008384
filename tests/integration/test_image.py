"""The component image for real: built from this tree (tests/integration/conftest.py), the whole
pipeline run in it with kfp.local's DockerRunner, and the query service served from it.

- The docker-runner run publishes, and its result equals the subprocess runner's on the same
  data and config (the shared run of conftest.py): the same gate decision, metrics within
  run-to-run noise, and the held-out acceptance queries answered with the expected category.
- The compiled pipeline names the image that was built and tested, on every step.
- ``twotower serve`` in the image: ready, healthy by its HEALTHCHECK, answers, follows CURRENT
  through the swap-under-load test the in-process service passes, and stops on SIGTERM in 5 s.
- The image runs as a non-root user and carries no trace of the CA bundle pip used.

Skipped, with the reason, where no Docker engine can run.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO
from tests.support.containers import ContainerService
from tests.support.shop_runs import ACCEPTANCE_QUERIES, shop_config
from tests.support.stores import build_store
from tests.support.swap_load import SWAP_SEEDS, swaps_under_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Recall@10 of two runs of one config differs by run-to-run float noise in TF's CPU kernels
#: (thread scheduling); the planted signal is far above it.
RECALL_NOISE = 0.05


@pytest.fixture(scope="module")
def docker_run(component_image, shop_data, tmp_path_factory):
    """``(root, config, summary)`` of the whole pipeline with every step in the image."""
    from pipelines.local_run import run_local

    _, built = component_image
    root = tmp_path_factory.mktemp("e2e-docker")
    config = shop_config(shop_data, root, (f"pipeline.image={built.tag}",))
    return root, config, run_local(config, runner="docker")


def test_every_step_ran_in_the_image(docker_run, component_image):
    root, _, summary = docker_run
    _, built = component_image
    log = (root / "runs" / summary["run_id"] / "pipeline.log").read_text()
    # kfp.local's DockerRunner announces the image once per task it starts in a container.
    assert log.count(f"Found image '{built.tag}'") >= len(summary["stage_seconds"]), log[-3000:]


def test_docker_run_publishes_what_the_subprocess_run_does(docker_run, shop_subprocess_run):
    _, _, docker = docker_run
    _, _, local = shop_subprocess_run
    assert docker["published"] and local["published"], (docker["reasons"], local["reasons"])
    for key in ("recall_at_10", "recall_at_50", "ndcg_at_10"):
        assert abs(docker["metrics"][key] - local["metrics"][key]) <= RECALL_NOISE, key
    assert docker["metrics"]["popularity_recall_at_10"] == pytest.approx(local["metrics"]["popularity_recall_at_10"])
    assert docker["index"]["n_items"] == local["index"]["n_items"]


@pytest.mark.parametrize("query", ACCEPTANCE_QUERIES)
def test_acceptance_queries_from_the_docker_published_index(docker_run, shop_subprocess_run, query):
    """The index the containers published answers the held-out queries with the kinds of
    products the subprocess run's index returns."""
    from datagen.synth_shop import expected_category
    from serving.retriever import Retriever

    wanted = expected_category(query)
    for name, (root, _, _) in (("docker", docker_run), ("subprocess", shop_subprocess_run)):
        answer = Retriever.load(str(root / "store")).retrieve({"query": query}, k=10)
        categories = [item["category"] for item in answer["items"]]
        assert sum(c == wanted for c in categories) >= 7, (name, query, categories)


def test_the_cli_on_the_host_queries_the_docker_published_index(docker_run):
    root, _, summary = docker_run
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "query", "--store", str(root / "store"),
                          "--text", ACCEPTANCE_QUERIES[0], "-k", "5"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"version {summary['version']}") and len(lines) == 6


def test_the_compiled_pipeline_names_the_built_image(component_image, tmp_path):
    from core.config import load_config
    from pipelines.compile import compile_pipeline

    client, built = component_image
    path = compile_pipeline(load_config("shop", [f"pipeline.image={built.tag}"]), str(tmp_path / "p.yaml"))
    spec = yaml.safe_load(open(path))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {built.tag}
    assert client.images.get(built.tag).id == built.image_id  # the tag is the image these tests ran


def test_the_image_runs_unprivileged_and_holds_no_build_ca(component_image):
    client, built = component_image
    out = client.containers.run(built.tag, ["sh", "-c", "id -u; find / -xdev -name build-ca.crt 2>/dev/null; "
                                                        "twotower --help | head -1"],
                                network_mode="host", remove=True).decode()
    lines = out.splitlines()
    assert lines[0] == "1000"
    assert not any("build-ca.crt" in line for line in lines)
    assert lines[-1].startswith("usage: twotower")


def test_flags_alone_ask_for_beams_boot_program(component_image):
    """Dataflow starts workers with flags only; without Beam's boot program the entrypoint says so."""
    import docker

    client, built = component_image
    if built.beam_boot_image.startswith("apache/"):
        pytest.skip("built with Beam's real boot program: it would start a worker")
    with pytest.raises(docker.errors.ContainerError) as info:
        client.containers.run(built.tag, ["--id=1-1", "--provision_endpoint=localhost:1"], network_mode="host",
                              remove=True, stderr=True)
    assert info.value.exit_status == 64
    assert b"boot program" in info.value.stderr


@pytest.fixture
def served(component_image, tmp_path):
    client, built = component_image
    store = build_store(tmp_path, extra_query_seeds=SWAP_SEEDS)
    service = ContainerService(client, built.tag, store.store)
    yield store, service
    service.remove()


def test_serve_in_the_image_passes_the_swap_under_load_test(served):
    store, service = served
    service.wait_ready(timeout=120, version=store.first_version)
    swaps_under_load(store, service, label="in the image")
    assert service.exit_code == 0 and service.stop_seconds < 5, (service.exit_code, service.stop_seconds)


def test_serve_in_the_image_is_healthy_and_stops_on_sigterm_within_5_s(served):
    store, service = served
    service.wait_ready(timeout=120, version=store.first_version)
    deadline = time.monotonic() + 60
    while service.health() != "healthy":
        assert service.health() in ("starting", "healthy"), service.logs()[-2000:]
        assert time.monotonic() < deadline, f"HEALTHCHECK never passed: {service.container.attrs['State']}"
        time.sleep(1)
    assert service.stop(timeout=5) == 0  # SIGTERM handled: not 137 (killed after the 5 s)
    assert service.stop_seconds < 5
    assert "received SIGTERM" in service.logs()
