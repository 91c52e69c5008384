"""pipelines.vertex_remote on google-cloud-aiplatform, against the fake Vertex AI API.

What the CLI tests (test_submit.py, test_remote_schedules.py) do not reach: reading a job's
state back and cancelling it, the job options the SDK sends, schedule start/end times,
anonymous credentials, the SDK's own refusals, endpoint handling (production defaults that a
fake endpoint must not leak into) and a quiet SDK.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.remote_common import RemoteError
from pipelines.vertex_remote import (VertexApiError, VertexRemote, anonymous_credentials, default_credentials,
                                     new_job_id, token_credentials)
from tests.fakes.vertex_api_server import FakeVertexServer, loopback_only, sdk_sandbox

TOKEN = "vertex-token"
ROOT = "gs://bucket/root"
JOBS = "/v1/projects/proj/locations/us-central1/pipelineJobs"


@pytest.fixture
def compiled(compiled_job):
    return compiled_job


@pytest.fixture
def sandbox():
    with sdk_sandbox() as box:
        yield box
    assert box.refused == [], f"the SDK tried to leave 127.0.0.1: {box.refused}"


@pytest.fixture
def server(sandbox):
    with FakeVertexServer(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def remote(server) -> VertexRemote:
    return VertexRemote("proj", "us-central1", api_endpoint=server.url, credentials=token_credentials(TOKEN))


# ---- jobs: status and cancel --------------------------------------------------------------

def test_status_is_read_back_and_cancel_ends_the_job(remote, server, compiled):
    path, params = compiled
    run = remote.submit(path, params, ROOT, display_name="nightly 2024-05-01")
    status = remote.run_status(run.run_id)
    assert (status.run_id, status.state, status.display_name) == (run.run_id, "PIPELINE_STATE_PENDING",
                                                                  "nightly 2024-05-01")
    assert status.link == run.link
    server.set_job_state(run.run_id, "PIPELINE_STATE_RUNNING")
    assert remote.run_status(run.run_id).state == "PIPELINE_STATE_RUNNING"

    remote.cancel_run(run.run_id)
    assert server.requests_to("POST", rf"{JOBS}/{run.run_id}:cancel")
    assert remote.run_status(remote.job_name(run.run_id)).state == "PIPELINE_STATE_CANCELLED"
    with pytest.raises(VertexApiError, match="could not cancel pipeline job .*HTTP 400: FAILED_PRECONDITION"):
        remote.cancel_run(run.run_id)


def test_state_travels_as_an_enum_number_and_is_read_as_its_name(remote, server, compiled):
    path, params = compiled
    run = remote.submit(path, params, ROOT)
    server.set_job_state(run.run_id, "PIPELINE_STATE_SUCCEEDED")
    assert remote.run_status(run.run_id).state == "PIPELINE_STATE_SUCCEEDED"
    get = server.requests_to("GET", rf"{JOBS}/{run.run_id}")[-1]
    assert get.query["$alt"] == ["json;enum-encoding=int"]  # so the fake answered state 4


def test_unknown_job_is_a_clear_404(remote):
    with pytest.raises(VertexApiError, match="could not read pipeline job nope: HTTP 404: NOT_FOUND") as info:
        remote.run_status("nope")
    assert info.value.status == 404


def test_resources_of_another_location_are_refused_before_any_request(remote, server):
    with pytest.raises(RemoteError, match="is not in projects/proj/locations/us-central1"):
        remote.run_status("projects/other/locations/us-central1/pipelineJobs/x")
    with pytest.raises(RemoteError, match="is not in projects/proj/locations/us-central1"):
        remote.pause_schedule("projects/proj/locations/europe-west4/schedules/1")
    assert server.requests == []


# ---- what the SDK sends -------------------------------------------------------------------

def test_job_options_reach_the_server(remote, server, compiled):
    path, params = compiled
    remote.submit(path, params, ROOT, labels={"team": "search", "env": "prod"}, enable_caching=False,
                  service_account="runner@proj.iam.gserviceaccount.com",
                  network="projects/123/global/networks/vpc")
    (create,) = server.requests_to("POST", JOBS)
    body = create.body
    assert body["labels"] == {"team": "search", "env": "prod"}
    assert body["serviceAccount"] == "runner@proj.iam.gserviceaccount.com"
    assert body["network"] == "projects/123/global/networks/vpc"
    tasks = body["pipelineSpec"]["root"]["dag"]["tasks"].values()
    assert tasks and all(task["cachingOptions"] == {"enableCache": False} for task in tasks)


def test_labels_the_sdk_cannot_send_are_refused_before_any_request(remote, server, compiled):
    path, params = compiled
    with pytest.raises(RemoteError, match="cannot prepare the pipeline job: Expect labels to be a mapping of string"):
        remote.submit(path, params, ROOT, labels={"team": 3})
    assert server.requests == []


def test_what_only_the_server_checks_comes_back_as_its_reason(remote, compiled):
    path, params = compiled
    with pytest.raises(VertexApiError, match="HTTP 400: INVALID_ARGUMENT: labels: invalid label 'Team'"):
        remote.submit(path, params, ROOT, labels={"Team": "x"})  # the SDK checks only that they are strings
    with pytest.raises(VertexApiError, match="HTTP 400: INVALID_ARGUMENT: network 'vpc' must be "
                                             "projects/PROJECT_NUMBER/global/networks/NAME"):
        remote.submit(path, params, ROOT, network="vpc")


def test_job_ids_fold_the_pipeline_name_and_do_not_collide_within_a_second():
    when = datetime(2024, 5, 1, 3, 0, 0, 123456, tzinfo=timezone.utc)
    assert new_job_id({"pipelineInfo": {"name": "Two Tower_v2"}}, when) == "two-tower-v2-20240501-030000-123456"
    assert new_job_id({"pipelineInfo": {"name": "2tower"}}, when).startswith("p-2tower-")


def test_schedule_start_and_end_times_are_sent_and_checked(remote, server, compiled):
    path, params = compiled
    start = datetime(2030, 1, 1, 3, 0, tzinfo=timezone.utc)
    info = remote.create_schedule(path, params, ROOT, cron="0 3 * * *", name="nightly", start_time=start,
                                  end_time=start + timedelta(days=30))
    (create,) = server.requests_to("POST", "/v1/projects/proj/locations/us-central1/schedules")
    assert create.body["startTime"].startswith("2030-01-01T03:00:00")
    assert create.body["endTime"].startswith("2030-01-31T03:00:00")
    assert info.state == "ACTIVE"
    with pytest.raises(VertexApiError, match="HTTP 400: INVALID_ARGUMENT: Schedule.endTime must be after"):
        remote.create_schedule(path, params, ROOT, cron="0 3 * * *", name="n", start_time=start, end_time=start)
    with pytest.raises(RemoteError, match="needs a time zone"):
        remote.create_schedule(path, params, ROOT, cron="0 3 * * *", name="n", start_time=datetime(2030, 1, 1))
    assert len(server.schedules) == 1


# ---- credentials and endpoints ------------------------------------------------------------

def test_anonymous_credentials_send_no_authorization(sandbox, compiled):
    path, params = compiled
    with FakeVertexServer(allow_anonymous=True) as server:
        remote = VertexRemote("proj", "us-central1", api_endpoint=server.url, credentials=anonymous_credentials())
        run = remote.submit(path, params, ROOT)
        assert remote.run_status(run.run_id).state == "PIPELINE_STATE_PENDING"
        assert all("authorization" not in request.headers for request in server.requests)


def test_production_defaults_are_the_regional_endpoint_and_a_fake_endpoint_does_not_leak(server):
    from google.cloud.aiplatform import initializer, utils

    VertexRemote("proj", "us-central1", api_endpoint=server.url, credentials=token_credentials(TOKEN))
    production = VertexRemote("proj", "europe-west4", credentials=token_credentials(TOKEN))
    assert production.api_endpoint == "europe-west4-aiplatform.googleapis.com"
    production._configure_sdk()  # what every call does first
    client = initializer.global_config.create_client(utils.ScheduleClientWithOverride)
    transport = client.select_version("v1")._transport  # building a client sends nothing
    assert transport.host == "https://europe-west4-aiplatform.googleapis.com"
    assert type(transport).__name__.endswith("RestTransport")


def test_missing_application_default_credentials_is_a_clear_error(monkeypatch):
    import google.auth
    import google.auth.exceptions

    def no_adc(**kwargs):
        raise google.auth.exceptions.DefaultCredentialsError("File not found")

    monkeypatch.setattr(google.auth, "default", no_adc)
    with pytest.raises(RemoteError, match="gcloud auth application-default login"):
        default_credentials()


@pytest.mark.parametrize("endpoint, message", [
    ("127.0.0.1:8080", "expected an http:// or https:// URL"),
    ("http://127.0.0.1:8080/v1", "without a path"),
])
def test_bad_api_endpoint_is_refused(endpoint, message):
    with pytest.raises(RemoteError, match=message):
        VertexRemote("proj", "us-central1", api_endpoint=endpoint, credentials=token_credentials(TOKEN))


def test_bad_region_is_refused():
    with pytest.raises(RemoteError, match="--region 'mars-north1' is not a Vertex AI region"):
        VertexRemote("proj", "mars-north1", credentials=token_credentials(TOKEN))


def test_unreachable_endpoint_is_one_line_error(sandbox):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = VertexRemote("proj", "us-central1", api_endpoint=f"http://127.0.0.1:{port}",
                          credentials=token_credentials(TOKEN))
    # list: no SDK retries (reads of one resource are retried by the SDK for up to 2 minutes)
    with pytest.raises(RemoteError, match=f"cannot reach the Vertex AI API at http://127.0.0.1:{port} "
                                          "to list schedules"):
        remote.list_schedules()


# ---- a quiet SDK --------------------------------------------------------------------------

def test_the_sdk_prints_nothing_on_success(remote, compiled, capsys):
    path, params = compiled
    remote.submit(path, params, ROOT)
    info = remote.create_schedule(path, params, ROOT, cron="0 3 * * *", name="nightly")
    remote.delete_schedule(info.schedule_id)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # no "Creating PipelineJob", no code snippets


def test_the_loopback_guard_refuses_and_records_the_outside_world():
    with loopback_only() as refused:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed anyway
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("storage.googleapis.com", 443)
    assert refused == ["connect 192.0.2.1:443", "resolve storage.googleapis.com"]
