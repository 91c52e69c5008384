"""``twotower run-status`` / ``cancel``: one submitted run, read back and cancelled, on KFP
(the real kfp.Client) and Vertex AI (google-cloud-aiplatform), both against the local fakes.

The fakes move a run's state the way the servers do (tests/fakes/kfp_api_server.py: PENDING ->
RUNNING -> ..., terminate -> CANCELING -> CANCELED; tests/fakes/vertex_api_server.py: the
PipelineState names) and refuse cancelling a finished run, as the real services do.
"""

from __future__ import annotations

import argparse

import pytest

from pipelines.cli import build_parser, main
from pipelines.kfp_remote import KfpRemote
from pipelines.remote_cli import wait_for_run
from pipelines.remote_common import RemoteError
from pipelines.vertex_remote import VertexRemote, token_credentials
from tests.fakes.kfp_api_server import FakeKfpServer
from tests.fakes.vertex_api_server import FakeVertexServer, sdk_sandbox

TOKEN = "vertex-token"


@pytest.fixture
def compiled(compiled_job):
    return compiled_job


@pytest.fixture
def kfp_server():
    with FakeKfpServer() as server:
        yield server


@pytest.fixture
def kfp_run(kfp_server, compiled):
    """A run submitted through the real client: (server, run id)."""
    path, params = compiled
    run = KfpRemote(kfp_server.url).submit(path, params, experiment="twotower", run_name="nightly")
    return kfp_server, run.run_id


@pytest.fixture
def vertex_run(compiled):
    """A job submitted through the SDK: (server, job id, the CLI's target flags)."""
    path, params = compiled
    with sdk_sandbox() as box, FakeVertexServer(token=TOKEN) as server:
        remote = VertexRemote("proj", "us-central1", api_endpoint=server.url, credentials=token_credentials(TOKEN))
        run = remote.submit(path, params, "gs://bucket/root", display_name="nightly")
        flags = ["--vertex", "--project", "proj", "--region", "us-central1", "--api-endpoint", server.url,
                 "--token", TOKEN]
        yield server, run.run_id, flags
    assert box.refused == [], f"the SDK tried to leave 127.0.0.1: {box.refused}"


# ---- KFP ----------------------------------------------------------------------------------

def test_kfp_run_status_prints_the_servers_state_name_and_link(kfp_run, capsys):
    server, run_id = kfp_run
    assert main(["run-status", run_id, "--host", server.url]) == 0
    assert capsys.readouterr().out.split() == [run_id, "PENDING", "nightly", f"{server.url}/#/runs/details/{run_id}"]
    server.set_run_state(run_id, "RUNNING")
    assert main(["run-status", run_id, "--host", server.url]) == 0
    assert capsys.readouterr().out.split()[1] == "RUNNING"


def test_kfp_cancel_terminates_the_run_and_a_finished_run_is_refused(kfp_run, capsys):
    server, run_id = kfp_run
    server.set_run_state(run_id, "RUNNING")
    assert main(["cancel", run_id, "--host", server.url]) == 0
    assert server.requests_to("POST", rf"/apis/v2beta1/runs/{run_id}:terminate")
    assert capsys.readouterr().out.strip() == f"cancel requested for run {run_id}: now CANCELED"
    assert main(["cancel", run_id, "--host", server.url]) == 2
    err = capsys.readouterr().err
    assert "could not cancel run" in err and "HTTP 400" in err and "Row not found" in err


def test_kfp_unknown_run_is_a_one_line_404(kfp_server, capsys):
    assert main(["run-status", "no-such-run", "--host", kfp_server.url]) == 2
    err = capsys.readouterr().err
    assert "could not read run no-such-run: HTTP 404" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("state, exit_code", [("SUCCEEDED", 0), ("FAILED", 1), ("CANCELED", 1)])
def test_wait_on_a_finished_run_exits_by_how_it_ended(kfp_run, capsys, state, exit_code):
    server, run_id = kfp_run
    server.set_run_state(run_id, state)
    assert main(["run-status", run_id, "--host", server.url, "--wait", "--poll-seconds", "0.01"]) == exit_code
    assert capsys.readouterr().out.split()[1] == state


def test_wait_polls_until_the_run_finishes_and_reports_each_change(kfp_run):
    server, run_id = kfp_run
    later_states = iter(["RUNNING", "RUNNING", "SUCCEEDED"])  # what the cluster reports between polls
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        server.set_run_state(run_id, next(later_states))

    seen = []
    final = wait_for_run(KfpRemote(server.url), run_id, poll_seconds=7, report=seen.append, sleep=sleep)
    assert [s.state for s in seen] == ["PENDING", "RUNNING", "SUCCEEDED"]  # the repeat is not reported
    assert final.succeeded and final.finished and slept == [7, 7, 7]


def test_wait_gives_up_at_the_timeout_and_names_the_state_left(kfp_run):
    server, run_id = kfp_run
    server.set_run_state(run_id, "RUNNING")
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(RemoteError, match=rf"run {run_id} still RUNNING after 60 s .*it keeps running"):
        wait_for_run(KfpRemote(server.url), run_id, poll_seconds=30, timeout_seconds=70, sleep=sleep,
                     clock=lambda: now[0])
    assert server.runs[run_id]["state"] == "RUNNING"  # giving up does not cancel


def test_wait_timeout_is_a_one_line_error_from_the_cli(kfp_run, capsys):
    server, run_id = kfp_run
    assert main(["run-status", run_id, "--host", server.url, "--wait", "--poll-seconds", "5",
                 "--timeout-seconds", "1"]) == 2
    assert "still PENDING" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_poll_and_timeout_seconds_must_be_positive_numbers(value, capsys):
    with pytest.raises(SystemExit):
        main(["run-status", "r", "--host", "http://127.0.0.1:1", "--wait", "--poll-seconds", value])
    assert "expected a number of seconds" in capsys.readouterr().err


# ---- Vertex AI ----------------------------------------------------------------------------

def test_vertex_run_status_and_cancel_through_the_sdk(vertex_run, capsys):
    server, job_id, flags = vertex_run
    server.set_job_state(job_id, "PIPELINE_STATE_RUNNING")
    assert main(["run-status", job_id, *flags]) == 0
    line = capsys.readouterr().out.split()
    assert line[:3] == [job_id, "PIPELINE_STATE_RUNNING", "nightly"]
    assert line[3].startswith("https://console.cloud.google.com/vertex-ai/")

    assert main(["cancel", job_id, *flags]) == 0
    assert server.requests_to("POST", rf"/v1/projects/proj/locations/us-central1/pipelineJobs/{job_id}:cancel")
    assert capsys.readouterr().out.strip() == f"cancel requested for run {job_id}: now PIPELINE_STATE_CANCELLED"
    assert main(["run-status", job_id, *flags, "--wait", "--poll-seconds", "0.01"]) == 1  # cancelled: not a success
    assert main(["cancel", job_id, *flags]) == 2
    assert "HTTP 400: FAILED_PRECONDITION" in capsys.readouterr().err


def test_vertex_wait_on_a_succeeded_job_exits_0(vertex_run, capsys):
    server, job_id, flags = vertex_run
    server.set_job_state(job_id, "PIPELINE_STATE_SUCCEEDED")
    assert main(["run-status", job_id, *flags, "--wait"]) == 0
    assert capsys.readouterr().out.split()[1] == "PIPELINE_STATE_SUCCEEDED"


def test_vertex_needs_project_and_region_before_any_request(capsys):
    assert main(["cancel", "job-1", "--vertex", "--project", "proj"]) == 2
    assert "--vertex needs --region" in capsys.readouterr().err


# ---- the CLI's help -----------------------------------------------------------------------

def _all_parsers(parser):
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_command_and_option_says_what_it_does_in_help():
    parsers = list(_all_parsers(build_parser()))
    names = {p.prog for p in parsers}
    assert "twotower run-status" in names and "twotower cancel" in names and "twotower schedule create" in names
    silent = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}" for p in parsers for a in p._actions
              if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not silent, "options without help text: " + ", ".join(silent)
    for p in parsers:  # each subcommand is listed with a one-line help in its parent
        for action in p._actions:
            if hasattr(action, "_choices_actions"):
                assert all(c.help for c in action._choices_actions), p.prog
