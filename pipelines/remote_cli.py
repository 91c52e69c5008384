"""``twotower submit``, ``run-status``, ``cancel`` and ``schedule create|list|pause|resume|delete``.

    twotower submit (--host URL | --vertex --project P --region R --pipeline-root gs://...)
                    [--config F] [--set key=value ...] [--data-date YYYY-MM-DD]
                    [--experiment NAME] [--run-name NAME] [--token T] [--api-endpoint URL]
    twotower run-status RUN_ID (--host URL | --vertex --project P --region R)
                    [--wait [--poll-seconds S] [--timeout-seconds S]]
    twotower cancel RUN_ID (--host URL | --vertex --project P --region R)
    twotower schedule create --cron "0 3 * * *" (--host URL | --vertex ...) [--name N]
                    [--config F] [--set ...] [--experiment NAME]
    twotower schedule list   (--host URL | --vertex --project P --region R)
    twotower schedule pause  ID (--host URL | --vertex ...)
    twotower schedule resume ID (--host URL | --vertex ...)
    twotower schedule delete ID (--host URL | --vertex ...)

The pipeline is compiled from the config (with ``--set`` overrides) at submission time, and
the config travels as the run's ``config_json`` parameter, with ``data_path`` and ``store``
beside it. Cron expressions are the standard 5 fields (minute hour day-of-month month
day-of-week), converted to KFP's 6-field form where needed.

``run-status --wait`` polls until the run finishes and exits 0 when it succeeded, 1 when it
failed or was cancelled (so a shell script or CI job can wait on a submitted run).

The main CLI owns the top-level parser: it calls :func:`add_submit_parser`,
:func:`add_run_parsers` and :func:`add_schedule_parsers` (and :func:`add_config_args` for its
own local commands), dispatches to :func:`cmd_submit` / :func:`cmd_run_status` /
:func:`cmd_cancel` / :func:`cmd_schedule`, and prints :data:`REMOTE_USER_ERRORS` as one line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import urllib.parse
from datetime import datetime
from typing import Any

from core.config import Config, ConfigError, load_config
from core.configs import DEFAULT_CONFIG, shipped_names
from pipelines.remote_common import CronError, RemoteError, RunStatus, ScheduleInfo, default_run_name

__all__ = ["RemoteError", "CronError", "REMOTE_USER_ERRORS", "add_config_args", "add_submit_parser",
           "add_run_parsers", "add_schedule_parsers", "cmd_submit", "cmd_run_status", "cmd_cancel",
           "cmd_schedule", "pipeline_arguments", "wait_for_run"]

#: Errors caused by the user's input or the remote server's refusal: one line, exit code 2.
REMOTE_USER_ERRORS: tuple[type[BaseException], ...] = (RemoteError, ConfigError)

DEFAULT_EXPERIMENT = "twotower"
REMOTE_SCHEDULE_COMMANDS = ("create", "list", "pause", "resume", "delete")
#: ``run-status --wait``: seconds between polls (a pipeline run takes minutes to hours).
DEFAULT_POLL_SECONDS = 30.0


# ---- parsers ------------------------------------------------------------------------------

def add_submit_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``submit`` to the main CLI's subparsers; returns the new parser."""
    parser = subparsers.add_parser("submit", help="submit one run to a KFP or Vertex AI Pipelines server")
    add_config_args(parser)
    _add_target_args(parser, with_pipeline_root=True)
    parser.add_argument("--data-date", metavar="YYYY-MM-DD", help="the data partition this run reads")
    parser.add_argument("--experiment", help=f"KFP experiment (default {DEFAULT_EXPERIMENT}; KFP only)")
    parser.add_argument("--run-name", help="display name (default: pipeline name + data date or time)")
    return parser


def add_run_parsers(subparsers) -> None:
    """Add ``run-status`` and ``cancel`` (one submitted run, by id) to the main CLI's subparsers."""
    status = subparsers.add_parser("run-status", help="a submitted run's state on KFP or Vertex AI "
                                                      "(--wait: until it finishes)")
    _add_run_id_arg(status)
    _add_target_args(status, with_pipeline_root=False)
    status.add_argument("--wait", action="store_true",
                        help="poll until the run finishes, printing each state change; "
                             "exit 0 if it succeeded, 1 if it failed or was cancelled")
    status.add_argument("--poll-seconds", type=_positive_seconds, default=DEFAULT_POLL_SECONDS, metavar="S",
                        help=f"with --wait: seconds between polls (default {DEFAULT_POLL_SECONDS:g})")
    status.add_argument("--timeout-seconds", type=_positive_seconds, default=None, metavar="S",
                        help="with --wait: give up (exit 2) when the run has not finished after S seconds")
    cancel = subparsers.add_parser("cancel", help="cancel a pending or running run on KFP or Vertex AI")
    _add_run_id_arg(cancel)
    _add_target_args(cancel, with_pipeline_root=False)


def _add_run_id_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="run id as printed by `submit` "
                                                         "(Vertex AI: the job id or its full resource name)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds above 0")
    return value


def add_schedule_parsers(subparsers):
    """Add ``schedule`` with ``create|list|pause|resume|delete``; returns its subparsers object.

    The caller may add further (local) subcommands to the returned object.
    """
    schedule = subparsers.add_parser("schedule", help="recurring runs on a KFP or Vertex AI Pipelines server")
    schedule_sub = schedule.add_subparsers(dest="schedule_command", required=True)

    create = schedule_sub.add_parser("create", help="create an active schedule (one run at a time, no catch-up)")
    create.add_argument("--cron", required=True,
                        help='standard 5-field cron, minute hour day-of-month month day-of-week, e.g. "0 3 * * *"')
    create.add_argument("--name", help="schedule display name (default: the pipeline name)")
    add_config_args(create)
    _add_target_args(create, with_pipeline_root=True)
    create.add_argument("--experiment", help=f"KFP experiment (default {DEFAULT_EXPERIMENT}; KFP only)")

    listing = schedule_sub.add_parser("list", help="one schedule per line: id, state, cron, name")
    _add_target_args(listing, with_pipeline_root=False)
    for verb, text in (("pause", "stop a schedule creating runs"), ("resume", "restart a paused schedule"),
                       ("delete", "delete a schedule (runs it created are kept)")):
        cmd = schedule_sub.add_parser(verb, help=text)
        cmd.add_argument("schedule_id", metavar="ID", help="schedule id as printed by `schedule list`")
        _add_target_args(cmd, with_pipeline_root=False)
    return schedule_sub


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``, the same on every command that loads a config."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=(
        f"YAML file, or the name of a config shipped with the package ({', '.join(shipped_names())}); "
        f"default {DEFAULT_CONFIG}"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.n_epochs=3 (repeatable)")


def _add_target_args(parser: argparse.ArgumentParser, with_pipeline_root: bool) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="KFP API server URL, e.g. https://kfp.example.com")
    where.add_argument("--vertex", action="store_true", help="Vertex AI Pipelines (needs --project, --region)")
    parser.add_argument("--project", help="Google Cloud project (Vertex AI)")
    parser.add_argument("--region", help="Vertex AI region, e.g. us-central1")
    if with_pipeline_root:
        parser.add_argument("--pipeline-root", help="where runs write artifacts: gs://BUCKET/PREFIX "
                                                    "(required on Vertex AI; KFP default: the server's)")
    parser.add_argument("--api-endpoint", help="Vertex AI base URL, http(s)://HOST[:PORT] "
                                               "(default https://REGION-aiplatform.googleapis.com)")
    parser.add_argument("--token", help="bearer token (KFP: existing_token; Vertex AI: instead of "
                                        "application-default credentials)")


# ---- handlers -----------------------------------------------------------------------------

def cmd_submit(args) -> int:
    """Compile the pipeline for the config, submit one run, print its id and link."""
    _check_target_flags(args, needs_pipeline_root=True)
    data_date = _check_data_date(args.data_date)
    config = load_config(args.config, args.overrides)
    run_name = args.run_name or default_run_name(config.pipeline.name, data_date)
    with _compiled(config) as (package_path, spec):
        parameters = pipeline_arguments(config, spec, data_date=data_date)
        if args.vertex:
            run = _vertex(args).submit(package_path, parameters, pipeline_root=args.pipeline_root,
                                       display_name=run_name)
        else:
            run = _kfp(args).submit(package_path, parameters, experiment=args.experiment or DEFAULT_EXPERIMENT,
                                    run_name=run_name, pipeline_root=args.pipeline_root)
    print(f"submitted run {run.run_id}: {run.link}")
    return 0


def cmd_run_status(args) -> int:
    """Print the run's state (``--wait``: every change until it finishes; the exit code says how)."""
    _check_target_flags(args, needs_pipeline_root=False)
    remote = _vertex(args) if args.vertex else _kfp(args)
    if not args.wait:
        print(_run_line(remote.run_status(args.run_id)))
        return 0
    final = wait_for_run(remote, args.run_id, poll_seconds=args.poll_seconds,
                         timeout_seconds=args.timeout_seconds, report=lambda s: print(_run_line(s), flush=True))
    return 0 if final.succeeded else 1


def cmd_cancel(args) -> int:
    """Ask the server to cancel the run; print the state it reports afterwards."""
    _check_target_flags(args, needs_pipeline_root=False)
    remote = _vertex(args) if args.vertex else _kfp(args)
    remote.cancel_run(args.run_id)
    status = remote.run_status(args.run_id)
    print(f"cancel requested for run {args.run_id}: now {status.state}")
    return 0


def wait_for_run(remote, run_id: str, poll_seconds: float, timeout_seconds: float | None = None,
                 report=lambda status: None, sleep=time.sleep, clock=time.monotonic) -> RunStatus:
    """Poll ``remote.run_status(run_id)`` until the run finishes; returns its final status.

    ``report`` is called with the first status and with each one whose state differs from the
    last. ``sleep`` and ``clock`` (seconds) are the waiting and the time source.

    Raises:
        RemoteError: when ``timeout_seconds`` pass first (naming the state it was left in), or
            when reading the status fails.
    """
    started = clock()
    last_state = None
    while True:
        status = remote.run_status(run_id)
        if status.state != last_state:
            report(status)
            last_state = status.state
        if status.finished:
            return status
        if timeout_seconds is not None and clock() - started + poll_seconds > timeout_seconds:
            raise RemoteError(f"run {run_id} still {status.state} after {clock() - started:.0f} s "
                              f"(--timeout-seconds {timeout_seconds:g}); it keeps running: {status.link}")
        sleep(poll_seconds)


def cmd_schedule(args) -> int:
    """``schedule create|list|pause|resume|delete`` against KFP (--host) or Vertex AI (--vertex)."""
    command = args.schedule_command
    if command not in REMOTE_SCHEDULE_COMMANDS:
        raise RemoteError(f"schedule {command}: not a remote schedule command")
    _check_target_flags(args, needs_pipeline_root=command == "create")
    if command == "create":
        return _schedule_create(args)
    remote = _vertex(args) if args.vertex else _kfp(args)
    if command == "list":
        for info in remote.list_schedules():
            print(_schedule_line(info))
        return 0
    action = {"pause": remote.pause_schedule, "resume": remote.resume_schedule,
              "delete": remote.delete_schedule}[command]
    action(args.schedule_id)
    print(f"{command}d schedule {args.schedule_id}")  # paused / resumed / deleted
    return 0


def _schedule_create(args) -> int:
    from pipelines.remote_common import kfp_cron, parse_cron

    # Check the cron before compiling anything: the commonest mistake should fail fastest.
    if args.vertex:
        parse_cron(args.cron)
    else:
        kfp_cron(args.cron)
    config = load_config(args.config, args.overrides)
    name = args.name or config.pipeline.name
    with _compiled(config) as (package_path, spec):
        # No data_date: a scheduled run derives its partition from its own schedule time.
        parameters = pipeline_arguments(config, spec)
        if args.vertex:
            info = _vertex(args).create_schedule(package_path, parameters, pipeline_root=args.pipeline_root,
                                                 cron=args.cron, name=name)
        else:
            info = _kfp(args).create_schedule(package_path, parameters, cron=args.cron, name=name,
                                              experiment=args.experiment or DEFAULT_EXPERIMENT,
                                              pipeline_root=args.pipeline_root)
    print(f"created schedule {info.schedule_id} ({info.state}, cron {info.cron!r}, {info.display_name}): {info.link}")
    return 0


def _run_line(status: RunStatus) -> str:
    return f"{status.run_id}  {status.state}  {status.display_name}  {status.link}"


def _schedule_line(info: ScheduleInfo) -> str:
    return f"{info.schedule_id}  {info.state:<7}  {info.cron:<15}  {info.display_name}"


# ---- pieces -------------------------------------------------------------------------------

def pipeline_arguments(config: Config, spec: dict, data_date: str = "") -> dict[str, Any]:
    """The run's parameter values: the config and its two most-overridden paths, plus ``data_date``.

    Passed explicitly even though they are also the compiled defaults, so the server records
    them on the run and a reader of the run page sees what it ran with.

    Raises:
        RemoteError: when the compiled pipeline does not declare a parameter we need to send.
    """
    values = {"config_json": config.to_json(), "data_path": config.data.path, "store": config.publish.store}
    if data_date:
        values["data_date"] = data_date
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    missing = sorted(set(values) - set(declared))
    if missing:
        raise RemoteError(f"the compiled pipeline has no parameter(s) {', '.join(missing)} "
                          f"(it declares: {', '.join(sorted(declared)) or 'none'})")
    return values


class _compiled:
    """Context manager: compile the pipeline for ``config`` into a temp folder.

    Yields ``(package_path, spec)``: the IR YAML path (what kfp.Client and the Vertex AI SDK's
    PipelineJob read) and the same document as a dict (to check the declared parameters).
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tmp = None

    def __enter__(self) -> tuple[str, dict]:
        import yaml

        from pipelines.compile import compile_pipeline

        self._tmp = tempfile.TemporaryDirectory(prefix="twotower-submit-")
        path = compile_pipeline(self._config, os.path.join(self._tmp.name, "pipeline.yaml"))
        with open(path) as f:
            spec = next(yaml.safe_load_all(f))  # the pipeline spec; a platform spec would follow it
        return path, spec

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def _check_target_flags(args, needs_pipeline_root: bool) -> None:
    """Flag combinations argparse cannot express, reported before any compile or network call."""
    if args.vertex:
        for flag, value in (("--project", args.project), ("--region", args.region)):
            if not value:
                raise RemoteError(f"--vertex needs {flag}")
        if needs_pipeline_root and not getattr(args, "pipeline_root", None):
            raise RemoteError("--vertex needs --pipeline-root gs://BUCKET/PREFIX (where runs write artifacts)")
        if getattr(args, "experiment", None):
            raise RemoteError("--experiment is for KFP (--host) only")
        return
    for flag, value in (("--project", args.project), ("--region", args.region),
                        ("--api-endpoint", args.api_endpoint)):
        if value:
            raise RemoteError(f"{flag} is for Vertex AI (--vertex) only")


def _check_data_date(text: str | None) -> str:
    if not text:
        return ""
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise RemoteError(f"--data-date {text!r}: expected YYYY-MM-DD") from None
    return text


def _kfp(args):
    from pipelines.kfp_remote import KfpRemote

    return KfpRemote(args.host, token=args.token)


def _vertex(args):
    from pipelines import vertex_remote

    if args.token:
        credentials = vertex_remote.token_credentials(args.token)
    elif args.api_endpoint and _is_loopback_http(args.api_endpoint):
        # A local fake or an authenticating proxy: application-default credentials are neither
        # needed nor, on a laptop without gcloud, available.
        credentials = vertex_remote.anonymous_credentials()
    else:
        credentials = None  # application-default credentials
    return vertex_remote.VertexRemote(args.project, args.region, api_endpoint=args.api_endpoint,
                                      credentials=credentials)


def _is_loopback_http(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1")
