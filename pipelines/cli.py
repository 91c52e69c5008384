"""The ``twotower`` command line.

    twotower data synth-shop --out DIR [--products N --queries N --seed S]
    twotower data movielens (--source DIR | --download) --out DIR
    twotower data synth-interactions --out DIR --items N --users U --interactions M [--seed S] [--categories C]
    twotower run [--config F] [--set key=value ...] [--data-date YYYY-MM-DD] [--runner subprocess|docker]
    twotower compile [--config F] [--set ...] --out pipeline.yaml
    twotower query --store DIR (--text "..." | --user-id ID | --history ITEM,...) [--history ...] [-k 10] [--exclude-seen]
    twotower retrieve --store DIR --queries q.jsonl [-k K] [--exclude-seen] --out r.jsonl
    twotower index list --store DIR
    twotower index show [VERSION] --store DIR [--json]
    twotower index rollback --to VERSION --store DIR
    twotower index gc --store DIR [--keep 5]
    twotower submit (--host URL | --vertex --project P --region R --pipeline-root gs://...) [--config F]
                    [--set ...] [--data-date YYYY-MM-DD] [--experiment NAME] [--run-name N] [--token T]
                    [--api-endpoint URL]
    twotower run-status RUN_ID (--host URL | --vertex --project P --region R) [--wait [--poll-seconds S]
                    [--timeout-seconds S]]
    twotower cancel RUN_ID (--host URL | --vertex --project P --region R)
    twotower schedule create --cron "0 3 * * *" (--host URL | --vertex --project P --region R
                    --pipeline-root gs://...) [--name N] [--config F] [--set ...] [--experiment NAME]
    twotower schedule list|pause ID|resume ID|delete ID (--host URL | --vertex --project P --region R)
    twotower schedule run --cron "0 3 * * *" [--config F] [--set ...] [--missed latest|all|skip] [--once]
    twotower image build [--tag twotower:0.1.0] [--base-image auto|NAME] [--accelerator cpu|gpu] [--no-cache]
    twotower ui --runs DIR --store DIR [--host 127.0.0.1 --port 8090]
    twotower serve --store DIR [--host 127.0.0.1 --port 8080] [--poll-seconds 5] [--max-k 1000]
                   [--allow-host NAME ...] [--max-connections 256] [--max-batch 64]

``--config`` takes a YAML file or the name of a config shipped in the package (``shop``, the
default; ``movielens``, ...: core/configs/), so the installed command works from any folder.

Every command exits 2 with a one-line message on bad input (config, data, request);
tracebacks are kept for genuine bugs.
"""

from __future__ import annotations

import argparse
import sys

from core.config import DEFAULT_IMAGE
from pipelines import remote_cli  # argparse + core.config only: cheap at parse time
from pipelines.remote_cli import add_config_args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_schedule_run_parser(schedule_sub) -> None:
    """``schedule run``: the long-running local scheduler."""
    run = schedule_sub.add_parser("run", help="local scheduler: run the pipeline on each day's partition")
    add_config_args(run)
    run.add_argument("--cron", required=True, help='5-field cron, UTC, e.g. "0 3 * * *"')
    run.add_argument("--missed", choices=["latest", "all", "skip"], default="latest",
                     help="fire times missed while down: run the newest only (default), all in order, "
                          "or none older than --grace-seconds")
    run.add_argument("--grace-seconds", type=float, default=3600.0,
                     help="how late a fire time may still run under --missed skip (default 3600)")
    run.add_argument("--backfill-from", metavar="YYYY-MM-DD",
                     help="on a first start, also handle fire times since this date (with --missed all)")
    run.add_argument("--once", action="store_true", help="handle the fire times due now, then exit")


EXCLUDE_SEEN_HELP = "leave out items the user already interacted with (training data and any given history)"
NO_RERANK_HELP = ("serve retrieval alone even when the version has the cascade's pre-ranker (train.cascade), "
                  "which otherwise re-scores the index's top-N")
NO_QUERY_VECTORS_HELP = ("run the query tower for every request, even a request by key alone that the version's "
                         "precomputed query vectors (index.query_vectors) would answer")


def _add_store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True,
                        help="the published version store: a folder or gs:// prefix (the config's publish.store)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twotower", description="Two-tower retrieval pipeline")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or convert a dataset into the canonical format")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth-shop", help="synthetic ESCI-like query->product dataset")
    synth.add_argument("--out", required=True, help="folder to write the dataset into (created if missing)")
    synth.add_argument("--products", type=int, default=2000, help="catalogue size (default 2000)")
    synth.add_argument("--queries", type=int, default=3000, help="distinct search queries (default 3000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same files")
    ml = data_sub.add_parser("movielens", help="convert raw MovieLens-100K to the canonical format")
    ml.add_argument("--source", help="folder with u.data, u.user, u.item, u.genre")
    ml.add_argument("--download", action="store_true", help="fetch the official zip (sha256-checked)")
    ml.add_argument("--out", required=True, help="folder to write the converted dataset into")
    si = data_sub.add_parser("synth-interactions",
                             help="synthetic implicit-feedback user->item dataset (parquet) at any size")
    si.add_argument("--out", required=True, help="folder to write the dataset into (created if missing)")
    si.add_argument("--items", type=_positive_int, required=True, help="catalog size")
    si.add_argument("--users", type=_positive_int, required=True, help="number of users")
    si.add_argument("--interactions", type=_positive_int, required=True,
                    help="rows in total (>= 3 per user gives every user a leave-last-out test item)")
    si.add_argument("--categories", type=_positive_int, default=20, help="item categories (default 20)")
    si.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same files")

    run = sub.add_parser("run", help="run the whole pipeline locally (KFP SubprocessRunner)")
    add_config_args(run)
    run.add_argument("--verbose", action="store_true", help="show the KFP runner's full output")
    run.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                     help="subprocess (default): every step in this Python; docker: every step in the "
                          "component image (pipeline.image; `twotower image build` makes it)")
    run.add_argument("--data-date", metavar="YYYY-MM-DD",
                     help="the day's partition to read (datasets with data.partitioned=true)")

    comp = sub.add_parser("compile", help="write the KFP IR YAML for KFP / Vertex AI")
    add_config_args(comp)
    comp.add_argument("--out", default="pipeline.yaml", help="where to write the YAML (default pipeline.yaml)")

    query = sub.add_parser("query", help="retrieve items for one query from the live index")
    _add_store_arg(query)
    who = query.add_mutually_exclusive_group()
    who.add_argument("--text", help="a search query (query -> item models)")
    who.add_argument("--user-id", help="a user the version was trained on (user -> item models)")
    query.add_argument("--history", help=(
        "comma-separated item ids, oldest first: clicks since the version's data date (with --user-id), "
        "or alone for a user the version does not know (models with a history feature)"))
    query.add_argument("-k", type=int, default=10, help="items to return (default 10)")
    query.add_argument("--exclude-seen", action="store_true", help=EXCLUDE_SEEN_HELP)
    query.add_argument("--version", help="a published version (default: CURRENT)")
    query.add_argument("--no-rerank", action="store_true", help=NO_RERANK_HELP)
    query.add_argument("--no-query-vectors", action="store_true", help=NO_QUERY_VECTORS_HELP)

    retrieve = sub.add_parser("retrieve", help="batch retrieval from a JSONL file of requests")
    _add_store_arg(retrieve)
    retrieve.add_argument("--queries", required=True, help='JSONL: {"user_id": ...} | {"query": ...} | features')
    retrieve.add_argument("-k", type=int, default=10, help="items per request (default 10)")
    retrieve.add_argument("--exclude-seen", action="store_true", help=EXCLUDE_SEEN_HELP)
    retrieve.add_argument("--out", required=True, help="JSONL file to write, one result line per request line")
    retrieve.add_argument("--version", help="a published version (default: CURRENT)")
    retrieve.add_argument("--no-rerank", action="store_true", help=NO_RERANK_HELP)
    retrieve.add_argument("--no-query-vectors", action="store_true", help=NO_QUERY_VECTORS_HELP)

    index = sub.add_parser("index", help="inspect the versioned index store")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    lst = index_sub.add_parser("list", help="one version per line, version id first, live one marked")
    _add_store_arg(lst)
    show = index_sub.add_parser("show", help="a version's manifest summary (created, run, metrics, gate, index)")
    show.add_argument("version", nargs="?", help="version id (default: the live one)")
    _add_store_arg(show)
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    rb = index_sub.add_parser("rollback", help="point CURRENT at an earlier, verified version")
    rb.add_argument("--to", required=True, metavar="VERSION", help="the version id to make live")
    _add_store_arg(rb)
    gc = index_sub.add_parser("gc", help="delete old versions and failed-publish orphans (never the live one)")
    _add_store_arg(gc)
    gc.add_argument("--keep", type=_positive_int, default=5, help="newest complete versions to keep (default 5)")

    image = sub.add_parser("image", help="the component image every step and the query service run on")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build the Dockerfile (starting dockerd and making the local "
                                               "bases when needed)")
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image name (default {DEFAULT_IMAGE}, the config's "
                                                            "pipeline.image default)")
    build.add_argument("--base-image", default="auto", help="the Python 3.11 base; auto (default): python:3.11-slim "
                       "when present, else a Debian-built local base (debootstrap, made once)")
    build.add_argument("--beam-boot-image", default="auto", help="where Beam's worker boot program comes from; "
                       "auto: Beam's SDK image when present, else a stand-in (no Dataflow workers)")
    build.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu",
                       help="gpu adds TensorFlow's CUDA wheels (requirements-gpu.txt)")
    build.add_argument("--ca-bundle", default=None, metavar="PEM", help="CA bundle pip trusts during the build "
                       "(default: this machine's, as pip finds it; '' for none); never copied into the image")
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    build.add_argument("--verbose", action="store_true", help="print the whole build output")

    remote_cli.add_submit_parser(sub)
    remote_cli.add_run_parsers(sub)
    add_schedule_run_parser(remote_cli.add_schedule_parsers(sub))

    srv = sub.add_parser("serve", help="HTTP query service over the live version, hot-reloading on publish")
    srv.add_argument("--store", required=True, help="store folder or gs:// prefix")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port to bind (default 8080; 0 = any free port)")
    srv.add_argument("--poll-seconds", type=float, default=5.0, help="how often to check CURRENT (default 5)")
    srv.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (1..1000)")
    srv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="also answer requests whose Host is NAME, e.g. a load balancer's or a Kubernetes "
                          "service's name (repeatable; '*' = any); IP addresses and localhost always are")
    srv.add_argument("--max-batch", type=int, default=64,
                     help="most concurrent requests answered by one query-tower call and one batched search "
                          "(default 64; 1 = each request alone)")
    srv.add_argument("--no-rerank", action="store_true", help=NO_RERANK_HELP)
    srv.add_argument("--no-query-vectors", action="store_true", help=NO_QUERY_VECTORS_HELP)
    srv.add_argument("--max-connections", type=int, default=256,
                     help="open connections at most; past it idle ones are closed first, then new ones get 503")
    srv.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="least severe log lines printed to stderr (default INFO: one per reload and request error)")
    from ui.cli import add_ui_parser  # local web page: runs, versions (rollback), query box

    add_ui_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipelines import commands
    from ui.cli import cmd_ui

    handler = {
        "data": commands.cmd_data,
        "run": commands.cmd_run,
        "compile": commands.cmd_compile,
        "query": commands.cmd_query,
        "retrieve": commands.cmd_retrieve,
        "index": commands.cmd_index,
        "serve": commands.cmd_serve,
        "image": commands.cmd_image,
        "submit": remote_cli.cmd_submit,
        "run-status": remote_cli.cmd_run_status,
        "cancel": remote_cli.cmd_cancel,
        "schedule": commands.cmd_schedule,
        "ui": cmd_ui,
    }[args.command]
    try:
        return handler(args)
    except commands.user_errors() + remote_cli.REMOTE_USER_ERRORS as exc:
        print(f"twotower {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
