"""One-off submissions: the real kfp.Client and google-cloud-aiplatform against local fakes.

The fakes check request shapes the way the real servers do (tests/fakes/kfp_api_server.py,
tests/fakes/vertex_api_server.py), so a test passes only when what is sent would be accepted.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_config
from pipelines.compile import compile_pipeline
from pipelines.kfp_remote import KfpRemote
from pipelines.remote_cli import (REMOTE_USER_ERRORS, RemoteError, add_schedule_parsers, add_submit_parser,
                                  cmd_submit, pipeline_arguments)
from pipelines.vertex_remote import VertexApiError, VertexRemote, token_credentials
from tests.fakes.kfp_api_server import FakeKfpServer
from tests.fakes.vertex_api_server import FakeVertexServer, sdk_sandbox

CONFIG = "shop"
VERTEX_FLAGS = ["--vertex", "--project", "proj", "--region", "us-central1"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(config, package path, spec dict) compiled once for the module."""
    config = load_config(CONFIG, ["train.n_epochs=2"])
    path = compile_pipeline(config, str(tmp_path_factory.mktemp("compiled") / "pipeline.yaml"))
    return config, path, yaml.safe_load(Path(path).read_text())


@pytest.fixture
def kfp_server():
    with FakeKfpServer() as server:
        yield server


@pytest.fixture
def vertex_server():
    with FakeVertexServer(token="vertex-token") as server:
        yield server


@pytest.fixture
def sandbox():
    """Keep the Vertex AI SDK on 127.0.0.1 (see tests.fakes.vertex_api_server.sdk_sandbox)."""
    with sdk_sandbox() as box:
        yield box
    assert box.refused == [], f"the SDK tried to leave 127.0.0.1: {box.refused}"


def run_cli(argv: list[str]) -> int:
    """Parse ``argv`` with the parsers the main CLI will mount and call the submit handler."""
    parser = argparse.ArgumentParser(prog="twotower")
    sub = parser.add_subparsers(dest="command", required=True)
    add_submit_parser(sub)
    add_schedule_parsers(sub)
    return cmd_submit(parser.parse_args(argv))


def posted_params(request) -> dict:
    return request.body["runtime_config"]["parameters"]


# ---- KFP ----------------------------------------------------------------------------------

def test_kfp_submit_sends_overridden_config_and_prints_run_link(kfp_server, capsys):
    rc = run_cli(["submit", "--host", kfp_server.url, "--config", CONFIG, "--set", "train.n_epochs=2",
                  "--set", "publish.store=gs://bucket/store", "--data-date", "2024-05-01",
                  "--experiment", "nightly"])
    assert rc == 0
    (run_id,) = kfp_server.runs
    out = capsys.readouterr().out
    assert f"{kfp_server.url}/#/runs/details/{run_id}" in out
    assert "Run details" not in out and "Experiment details" not in out  # the client's own prints are muted

    (create,) = kfp_server.requests_to("POST", "/apis/v2beta1/runs")
    params = posted_params(create)
    assert json.loads(params["config_json"])["train"]["n_epochs"] == 2
    assert params["store"] == "gs://bucket/store"
    assert params["data_date"] == "2024-05-01"
    assert create.body["display_name"] == "twotower 2024-05-01"
    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == "nightly"
    assert kfp_server.runs[run_id]["experiment_id"] == experiment["experiment_id"]


def test_kfp_submit_reuses_an_existing_experiment(kfp_server, compiled):
    config, path, spec = compiled
    remote = KfpRemote(kfp_server.url)
    first = remote.submit(path, pipeline_arguments(config, spec), experiment="twotower")
    second = remote.submit(path, pipeline_arguments(config, spec), experiment="twotower")
    assert first.run_id != second.run_id
    assert len(kfp_server.experiments) == 1


def test_kfp_bearer_token_is_sent_and_a_wrong_one_is_a_clear_error(compiled):
    config, path, spec = compiled
    with FakeKfpServer(token="s3cret") as server:
        run = KfpRemote(server.url, token="s3cret").submit(path, pipeline_arguments(config, spec), "twotower")
        assert run.run_id in server.runs
        with pytest.raises(RemoteError, match="HTTP 401.*bearer token") as info:
            KfpRemote(server.url, token="wrong").submit(path, pipeline_arguments(config, spec), "twotower")
        assert info.value.status == 401


def test_kfp_server_refusal_surfaces_status_and_message(kfp_server, compiled):
    _, path, _ = compiled
    with pytest.raises(RemoteError, match=r"HTTP 400: .*parameter 'bogus' is not an input"):
        KfpRemote(kfp_server.url).submit(path, {"bogus": "x"}, experiment="twotower")
    with pytest.raises(RemoteError, match=r"HTTP 400: .*'store' is STRING but got int"):
        KfpRemote(kfp_server.url).submit(path, {"store": 3}, experiment="twotower")


def test_kfp_unreachable_host_is_one_line_error():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match="cannot reach the KFP API"):
        KfpRemote(f"http://127.0.0.1:{port}")


def test_kfp_host_must_be_a_url():
    with pytest.raises(RemoteError, match="http:// or https://"):
        run_cli(["submit", "--host", "kfp.example.com", "--config", CONFIG])


# ---- Vertex AI (the real google-cloud-aiplatform SDK against the fake) ----------------------

JOBS = "/v1/projects/proj/locations/us-central1/pipelineJobs"


def vertex_remote(server, token: str = "vertex-token") -> VertexRemote:
    return VertexRemote("proj", "us-central1", api_endpoint=server.url, credentials=token_credentials(token))


def test_vertex_submit_creates_the_job_through_the_sdk_and_prints_console_link(vertex_server, sandbox, compiled,
                                                                               capsys):
    _, _, spec = compiled
    rc = run_cli(["submit", *VERTEX_FLAGS, "--pipeline-root", "gs://bucket/root", "--api-endpoint",
                  vertex_server.url, "--token", "vertex-token", "--config", CONFIG, "--set", "train.n_epochs=2",
                  "--data-date", "2024-05-01"])
    assert rc == 0
    (create,) = vertex_server.requests_to("POST", JOBS)
    (job_id,) = create.query["pipelineJobId"]
    out = capsys.readouterr().out
    assert out.splitlines() == [f"submitted run {job_id}: https://console.cloud.google.com/vertex-ai/locations/"
                                f"us-central1/pipelines/runs/{job_id}?project=proj"]  # no SDK log lines
    assert create.headers["authorization"] == "Bearer vertex-token"
    body = create.body
    assert body["displayName"] == "twotower 2024-05-01"
    assert body["pipelineSpec"] == spec  # the compiled YAML, sent whole (numbers as JSON doubles)
    runtime = body["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://bucket/root"
    assert json.loads(runtime["parameterValues"]["config_json"])["train"]["n_epochs"] == 2
    assert runtime["parameterValues"]["data_date"] == "2024-05-01"
    job = vertex_server.pipeline_jobs[f"projects/proj/locations/us-central1/pipelineJobs/{job_id}"]
    assert job["state"] == "PIPELINE_STATE_PENDING"
    (check,) = sandbox.bucket_checks  # the SDK's pipeline-root bucket check, for our root and project
    assert check["output_artifacts_gcs_dir"] == "gs://bucket/root" and check["project"] == "proj"


def test_vertex_without_pipeline_root_is_a_clear_error_before_any_request(vertex_server):
    with pytest.raises(RemoteError, match="--pipeline-root"):
        run_cli(["submit", *VERTEX_FLAGS, "--api-endpoint", vertex_server.url, "--token", "vertex-token",
                 "--config", CONFIG])
    assert vertex_server.requests == []


def test_vertex_needs_project_and_region():
    with pytest.raises(RemoteError, match="--vertex needs --project"):
        run_cli(["submit", "--vertex", "--region", "r", "--pipeline-root", "gs://b/r", "--config", CONFIG])


def test_vertex_pipeline_root_must_be_gcs(vertex_server, sandbox, compiled):
    config, path, spec = compiled
    with pytest.raises(RemoteError, match="gs://"):
        vertex_remote(vertex_server).submit(path, pipeline_arguments(config, spec), pipeline_root="/tmp/root")
    assert vertex_server.requests == []


def test_vertex_api_errors_carry_status_and_server_message(vertex_server, sandbox, compiled):
    config, path, spec = compiled
    remote = vertex_remote(vertex_server)
    remote.submit(path, pipeline_arguments(config, spec), "gs://bucket/root", job_id="twotower-one")
    with pytest.raises(VertexApiError, match="could not create the pipeline job: HTTP 409: ALREADY_EXISTS: "
                                             ".*twotower-one already exists") as info:
        remote.submit(path, pipeline_arguments(config, spec), "gs://bucket/root", job_id="twotower-one")
    assert info.value.status == 409
    assert "Traceback" not in str(info.value) and "http://" not in str(info.value)  # the server's words only


def test_vertex_parameters_the_pipeline_lacks_are_refused_by_the_sdk_before_any_request(vertex_server, sandbox,
                                                                                       compiled):
    _, path, _ = compiled
    with pytest.raises(RemoteError, match="cannot prepare the pipeline job: .*parameter bogus is not found"):
        vertex_remote(vertex_server).submit(path, {"bogus": "x"}, "gs://bucket/root")
    assert vertex_server.requests == []


def test_vertex_loopback_without_token_goes_anonymous_and_the_401_is_reported(vertex_server, sandbox):
    with pytest.raises(RemoteError, match="HTTP 401: UNAUTHENTICATED: no credentials were sent") as info:
        run_cli(["submit", *VERTEX_FLAGS, "--pipeline-root", "gs://bucket/root", "--api-endpoint", vertex_server.url,
                 "--config", CONFIG])
    assert info.value.status == 401
    (create,) = vertex_server.requests_to("POST", JOBS)
    assert "authorization" not in create.headers
    assert vertex_server.pipeline_jobs == {}


def test_vertex_wrong_token_is_a_clear_401(vertex_server, sandbox, compiled):
    config, path, spec = compiled
    with pytest.raises(VertexApiError, match="HTTP 401: UNAUTHENTICATED: the bearer token is wrong or expired"):
        vertex_remote(vertex_server, token="stale").submit(path, pipeline_arguments(config, spec), "gs://bucket/root")
    assert vertex_server.pipeline_jobs == {}


# ---- input checks shared by both ----------------------------------------------------------

def test_bad_data_date_is_rejected(kfp_server):
    with pytest.raises(RemoteError, match="--data-date '2024-13-01': expected YYYY-MM-DD"):
        run_cli(["submit", "--host", kfp_server.url, "--config", CONFIG, "--data-date", "2024-13-01"])
    assert kfp_server.requests == []


def test_bad_override_is_a_user_error(kfp_server):
    with pytest.raises(ConfigError, match="train.n_epoch: unknown field") as info:
        run_cli(["submit", "--host", kfp_server.url, "--config", CONFIG, "--set", "train.n_epoch=2"])
    assert isinstance(info.value, REMOTE_USER_ERRORS)


def test_parameters_the_pipeline_does_not_declare_are_refused(compiled):
    config, _, spec = compiled
    without_date = json.loads(json.dumps(spec))
    without_date["root"]["inputDefinitions"]["parameters"].pop("data_date", None)
    with pytest.raises(RemoteError, match="no parameter\\(s\\) data_date"):
        pipeline_arguments(config, without_date, data_date="2024-05-01")
    assert "data_date" not in pipeline_arguments(config, spec)  # empty: derived from the schedule time


def test_flags_for_the_other_backend_are_refused(kfp_server):
    with pytest.raises(RemoteError, match="--project is for Vertex AI"):
        run_cli(["submit", "--host", kfp_server.url, "--project", "p", "--config", CONFIG])
