"""Recurring runs: cron checking, and create/list/pause/resume/delete round trips through the
``twotower schedule`` handlers against the fake KFP and Vertex AI servers (the latter through the
real google-cloud-aiplatform SDK)."""

from __future__ import annotations

import argparse
import json

import pytest

from pipelines.remote_cli import RemoteError, add_schedule_parsers, add_submit_parser, cmd_schedule
from pipelines.remote_common import CronError, cron_from_kfp, kfp_cron, parse_cron
from tests.fakes.kfp_api_server import FakeKfpServer, check_kfp_cron
from tests.fakes.vertex_api_server import FakeVertexServer, sdk_sandbox

CONFIG = "shop"
TOKEN = "vertex-token"


def build_parser():
    """The main CLI's shape: returns (parser, schedule subparsers) so a local command can be added."""
    parser = argparse.ArgumentParser(prog="twotower")
    sub = parser.add_subparsers(dest="command", required=True)
    add_submit_parser(sub)
    return parser, add_schedule_parsers(sub)


def schedule(argv: list[str], capsys) -> list[str]:
    """Run ``twotower schedule ...``; returns the printed lines."""
    parser, _ = build_parser()
    assert cmd_schedule(parser.parse_args(["schedule", *argv])) == 0
    return capsys.readouterr().out.splitlines()


# ---- cron ---------------------------------------------------------------------------------

@pytest.mark.parametrize("expression", ["0 3 * * *", "*/15 * * * *", "30 2 1,15 * MON-FRI",
                                        "0 0-23/2 * JAN-MAR 0", "TZ=Europe/Paris 0 3 * * *"])
def test_valid_cron_expressions_pass(expression):
    tz, fields = parse_cron(expression)
    assert len(fields) == 5


@pytest.mark.parametrize("expression, message", [
    ("0 3 * *", "expected 5 fields .* got 4"),
    ("0 0 3 * * *", "got 6 .no seconds field"),
    ("60 3 * * *", r"field 1 \(minute\) '60': value 60 out of range 0-59"),
    ("0 24 * * *", r"field 2 \(hour\) '24': value 24 out of range 0-23"),
    ("0 3 0 * *", r"field 3 \(day-of-month\)"),
    ("0 3 * 13 *", r"field 4 \(month\)"),
    ("0 3 * * 7", r"field 5 \(day-of-week\) '7': value 7 out of range 0-6"),
    ("0 3 * * FOO", r"field 5 \(day-of-week\) 'FOO': 'FOO' is not a number or a name"),
    ("*/0 * * * *", r"field 1 \(minute\) '\*/0': step '0'"),
    ("5/10 * * * *", r"field 1 \(minute\) .*a step needs"),
    ("0 5-1 * * *", r"field 2 \(hour\) '5-1': range '5-1' runs backwards"),
    ("0 1,,2 * * *", r"field 2 \(hour\) .*empty list item"),
    ("@daily", "descriptors"),
])
def test_bad_cron_names_the_field(expression, message):
    with pytest.raises(CronError, match=message):
        parse_cron(expression)


def test_kfp_cron_gains_a_seconds_field():
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("  */5   1-2 * * MON ") == "0 */5 1-2 * * MON"
    assert cron_from_kfp("0 0 3 * * *") == "0 3 * * *"
    with pytest.raises(CronError, match="time zone is not supported on KFP"):
        kfp_cron("TZ=UTC 0 3 * * *")


def test_fake_kfp_server_refuses_a_5_field_cron():
    # The trap the conversion exists for: the fake must catch an unconverted expression.
    with pytest.raises(ValueError, match="exactly 6 fields"):
        check_kfp_cron("0 3 * * *")
    check_kfp_cron("0 0 3 * * *")


# ---- KFP ----------------------------------------------------------------------------------

def test_kfp_schedule_round_trip(capsys):
    with FakeKfpServer(max_page_size=1) as server:  # page size 1: list must follow next_page_token
        host = ["--host", server.url]
        (line,) = schedule(["create", "--cron", "0 3 * * *", "--name", "nightly", *host, "--config", CONFIG,
                            "--set", "train.n_epochs=2"], capsys)
        (rid,) = server.recurring_runs
        assert line.startswith(f"created schedule {rid} (ACTIVE, cron '0 3 * * *', nightly)")
        assert line.endswith(f"{server.url}/#/recurringrun/details/{rid}")
        (create,) = server.requests_to("POST", "/apis/v2beta1/recurringruns")
        body = create.body
        assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
        assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
        params = body["runtime_config"]["parameters"]
        assert json.loads(params["config_json"])["train"]["n_epochs"] == 2
        assert "data_date" not in params  # a scheduled run derives it from its schedule time

        schedule(["create", "--cron", "30 4 * * MON", "--name", "weekly", *host, "--config", CONFIG], capsys)
        listed = schedule(["list", *host], capsys)
        assert len(listed) == 2 and len(server.requests_to("GET", "/apis/v2beta1/recurringruns")) == 2
        assert listed[0].split()[:3] == [rid, "ACTIVE", "0"] and listed[0].endswith("nightly")

        assert schedule(["pause", rid, *host], capsys) == [f"paused schedule {rid}"]
        assert server.recurring_runs[rid]["status"] == "DISABLED"
        assert schedule(["list", *host], capsys)[0].split()[1] == "PAUSED"

        assert schedule(["resume", rid, *host], capsys) == [f"resumed schedule {rid}"]
        assert server.recurring_runs[rid]["status"] == "ENABLED"

        assert schedule(["delete", rid, *host], capsys) == [f"deleted schedule {rid}"]
        assert rid not in server.recurring_runs
        assert [line.split()[0] for line in schedule(["list", *host], capsys)] == list(server.recurring_runs)


def test_kfp_bad_cron_fails_before_any_request():
    with FakeKfpServer() as server:
        parser, _ = build_parser()
        args = parser.parse_args(["schedule", "create", "--cron", "0 25 * * *", "--host", server.url,
                                  "--config", CONFIG])
        with pytest.raises(CronError, match=r"field 2 \(hour\)"):
            cmd_schedule(args)
        assert server.requests == []


@pytest.mark.parametrize("verb", ["pause", "resume", "delete"])
def test_kfp_unknown_schedule_id_is_a_clear_error(verb):
    with FakeKfpServer() as server:
        parser, _ = build_parser()
        with pytest.raises(RemoteError, match=f"could not {verb} schedule no-such-id: HTTP 404") as info:
            cmd_schedule(parser.parse_args(["schedule", verb, "no-such-id", "--host", server.url]))
        assert info.value.status == 404


# ---- Vertex AI (the real google-cloud-aiplatform SDK against the fake) ----------------------

SCHEDULES = "/v1/projects/proj/locations/us-central1/schedules"


@pytest.fixture
def vertex():
    """A fake Vertex AI API (list pages of one schedule), with the SDK kept on 127.0.0.1."""
    with sdk_sandbox() as box, FakeVertexServer(token=TOKEN, max_page_size=1) as server:
        yield server
    assert box.refused == [], f"the SDK tried to leave 127.0.0.1: {box.refused}"


def vertex_flags(server) -> list[str]:
    return ["--vertex", "--project", "proj", "--region", "us-central1", "--api-endpoint", server.url,
            "--token", TOKEN]


def test_vertex_schedule_round_trip(vertex, capsys):
    server, flags = vertex, vertex_flags(vertex)
    (line,) = schedule(["create", "--cron", "0  3 * * *", "--name", "nightly", *flags,
                        "--pipeline-root", "gs://bucket/root", "--config", CONFIG,
                        "--set", "train.n_epochs=2"], capsys)
    (name,) = server.schedules
    sid = name.rsplit("/", 1)[-1]
    assert name == f"projects/proj/locations/us-central1/schedules/{sid}"
    assert line.startswith(f"created schedule {sid} (ACTIVE, cron '0 3 * * *', nightly): ")
    assert line.endswith(f"/locations/us-central1/pipelines/schedules/{sid}?project=proj")
    (create,) = server.requests_to("POST", SCHEDULES)
    body = create.body
    assert body["displayName"] == "nightly" and body["cron"] == "0 3 * * *"
    assert body["maxConcurrentRunCount"] == "1"  # int64 travels as a JSON string
    assert not body.get("catchUp")  # no backfill: the service's default, left alone
    request = body["createPipelineJobRequest"]
    assert request["parent"] == "projects/proj/locations/us-central1"
    assert request["pipelineJob"]["pipelineSpec"]["pipelineInfo"]["name"] == "twotower"
    runtime = request["pipelineJob"]["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://bucket/root"
    assert json.loads(runtime["parameterValues"]["config_json"])["train"]["n_epochs"] == 2
    assert "data_date" not in runtime["parameterValues"]

    schedule(["create", "--cron", "TZ=Europe/Paris 0 5 * * *", *flags, "--pipeline-root", "gs://bucket/r",
              "--config", CONFIG], capsys)
    listed = schedule(["list", *flags], capsys)
    assert len(listed) == 2 and len(server.requests_to("GET", SCHEDULES)) == 2  # two pages followed
    assert listed[0].split()[:3] == [sid, "ACTIVE", "0"] and listed[0].endswith("nightly")
    assert listed[1].split()[1:3] == ["ACTIVE", "TZ=Europe/Paris"]

    assert schedule(["pause", sid, *flags], capsys) == [f"paused schedule {sid}"]
    assert server.schedules[name]["state"] == "PAUSED"
    assert schedule(["list", *flags], capsys)[0].split()[1] == "PAUSED"  # read back (as an enum number)
    with pytest.raises(RemoteError, match="could not pause schedule .*HTTP 400: FAILED_PRECONDITION: "
                                          ".*in state PAUSED") as info:
        schedule(["pause", sid, *flags], capsys)
    assert info.value.status == 400

    assert schedule(["resume", sid, *flags], capsys) == [f"resumed schedule {sid}"]
    (resume,) = server.requests_to("POST", rf"/v1/{name}:resume")
    assert not (resume.body or {}).get("catchUp")
    assert server.schedules[name]["state"] == "ACTIVE"

    assert schedule(["delete", sid, *flags], capsys) == [f"deleted schedule {sid}"]
    assert name not in server.schedules
    (operation,) = server.operations  # the SDK waited for the delete operation, polling it once
    assert server.requests_to("GET", rf"/ui/{operation}")
    assert len(schedule(["list", *flags], capsys)) == 1


def test_vertex_schedule_without_pipeline_root_is_a_clear_error(vertex):
    parser, _ = build_parser()
    args = parser.parse_args(["schedule", "create", "--cron", "0 3 * * *", *vertex_flags(vertex),
                              "--config", CONFIG])
    with pytest.raises(RemoteError, match="--vertex needs --pipeline-root"):
        cmd_schedule(args)
    assert vertex.requests == []


def test_vertex_unknown_schedule_is_a_clear_error(vertex):
    parser, _ = build_parser()
    with pytest.raises(RemoteError, match="could not resume schedule 42: HTTP 404: NOT_FOUND: "
                                          "projects/proj/locations/us-central1/schedules/42 not found") as info:
        cmd_schedule(parser.parse_args(["schedule", "resume", "42", *vertex_flags(vertex)]))
    assert info.value.status == 404


def test_vertex_schedule_id_must_be_a_number(vertex):
    parser, _ = build_parser()
    with pytest.raises(RemoteError, match="could not delete schedule nightly: HTTP 400: INVALID_ARGUMENT: "
                                          ".*must be a number"):
        cmd_schedule(parser.parse_args(["schedule", "delete", "nightly", *vertex_flags(vertex)]))


def test_vertex_bad_cron_fails_before_any_request(vertex):
    parser, _ = build_parser()
    args = parser.parse_args(["schedule", "create", "--cron", "0 3 * * * *", *vertex_flags(vertex),
                              "--pipeline-root", "gs://bucket/r", "--config", CONFIG])
    with pytest.raises(CronError, match="got 6"):
        cmd_schedule(args)
    assert vertex.requests == []


def test_vertex_unknown_time_zone_is_refused_by_the_server(vertex):
    parser, _ = build_parser()
    args = parser.parse_args(["schedule", "create", "--cron", "TZ=Mars/Olympus 0 3 * * *", *vertex_flags(vertex),
                              "--pipeline-root", "gs://bucket/r", "--config", CONFIG])
    with pytest.raises(RemoteError, match="could not create the schedule: HTTP 400: INVALID_ARGUMENT: "
                                          ".*unknown time zone 'Mars/Olympus'"):
        cmd_schedule(args)
    assert vertex.schedules == {}


# ---- wiring -------------------------------------------------------------------------------

def test_schedule_subparsers_take_a_local_subcommand():
    parser, schedule_sub = build_parser()
    schedule_sub.add_parser("run")
    assert parser.parse_args(["schedule", "run"]).schedule_command == "run"
    with pytest.raises(RemoteError, match="not a remote schedule command"):
        cmd_schedule(parser.parse_args(["schedule", "run"]))


def test_host_or_vertex_is_required(capsys):
    parser, _ = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["schedule", "list"])
    assert "one of the arguments --host --vertex is required" in capsys.readouterr().err
