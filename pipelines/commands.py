"""Handlers behind the ``twotower`` subcommands (argument parsing lives in cli.py)."""

from __future__ import annotations

import json
import sys
import tempfile

from core.config import ConfigError, load_config
from core.contracts.files import PIPELINE_LOG, SUMMARY_FILE


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported as one line with exit code 2.

    Imported here, not at module top, because the stage packages pull in heavy deps.
    """
    from core.cron import CronError
    from core.partitions import PartitionError
    from core.store import StoreError
    from datagen.movielens import ChecksumMismatchError, MovieLensFormatError
    from features.errors import TransformError
    from features.ingest import IngestError
    from pipelines.scheduler import SchedulerBusyError
    from serving.retriever import NoLiveVersionError, RequestError
    from components.image.base import BaseImageError
    from components.image.build import ImageBuildError
    from components.image.engine import EngineUnavailable
    from pipelines.local_run import ImageMissingError

    return (ConfigError, FileNotFoundError, IngestError, TransformError, MovieLensFormatError, ChecksumMismatchError,
            RequestError, NoLiveVersionError, StoreError, PartitionError, CronError, SchedulerBusyError,
            EngineUnavailable, BaseImageError, ImageBuildError, ImageMissingError)


def cmd_image(args) -> int:
    """``image build``: the component image from the Dockerfile (components/image/build.py)."""
    from components.image.build import build_image

    built = build_image(tag=args.tag, base_image=args.base_image, beam_boot_image=args.beam_boot_image,
                        accelerator=args.accelerator, ca_bundle=None if args.ca_bundle is None else args.ca_bundle,
                        no_cache=args.no_cache, verbose=args.verbose)
    print(f"image {built.tag} {built.image_id} ({built.size_bytes / 1e9:.2f} GB, base {built.base_image}, "
          f"{built.seconds:.0f} s)")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "synth-shop":
        from datagen.synth_shop import generate_shop

        counts = generate_shop(args.out, products=args.products, queries=args.queries, seed=args.seed)
        print(f"wrote synthetic shop dataset to {args.out}: {json.dumps(counts, sort_keys=True)}")
        return 0
    if args.data_command == "synth-interactions":
        from datagen.synth_interactions import SynthInteractionsError, generate_interactions

        try:
            counts = generate_interactions(args.out, items=args.items, users=args.users,
                                           interactions=args.interactions, seed=args.seed,
                                           categories=args.categories)
        except SynthInteractionsError as exc:
            # Named like argparse's own errors for this sub-command: these are argument errors too.
            print(f"twotower data synth-interactions: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote synthetic interactions dataset to {args.out}: {json.dumps(counts, sort_keys=True)}")
        return 0
    from datagen.movielens import convert_movielens, download_movielens

    if bool(args.source) == bool(args.download):
        raise ConfigError("give exactly one of --source DIR or --download")
    if args.source:
        counts = convert_movielens(args.source, args.out)
    else:
        # The raw files stay out of the dataset folder: only the canonical tables are kept.
        with tempfile.TemporaryDirectory(prefix="ml-100k-") as raw:
            counts = convert_movielens(download_movielens(raw), args.out)
    print(f"wrote MovieLens-100K in the canonical format to {args.out}: {json.dumps(counts, sort_keys=True)}")
    return 0


def cmd_schedule(args) -> int:
    """``schedule run`` is the local scheduler; create/list/pause/resume/delete talk to KFP / Vertex AI."""
    if args.schedule_command == "run":
        return cmd_schedule_run(args)
    from pipelines.remote_cli import cmd_schedule as cmd_remote_schedule

    return cmd_remote_schedule(args)


def cmd_schedule_run(args) -> int:
    """``twotower schedule run``: the local daily scheduler (see pipelines/scheduler.py)."""
    import datetime as dt
    import logging

    from core.cron import parse_cron
    from core.partitions import parse_date
    from pipelines.local_run import absolutize, run_local
    from pipelines.scheduler import LocalScheduler

    config = absolutize(load_config(args.config, args.overrides))
    cron = parse_cron(args.cron)
    backfill = (dt.datetime.combine(parse_date(args.backfill_from, "--backfill-from"), dt.time())
                if args.backfill_from else None)
    try:
        scheduler = LocalScheduler(config, cron, run_local, missed=args.missed,
                                   grace=dt.timedelta(seconds=args.grace_seconds), backfill_from=backfill)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"schedule {cron.expression!r} (UTC) on {config.data.path}: partition = fire date - "
          f"{config.data.partition_lag_days} day(s); missed runs: {args.missed}; "
          f"next fire {scheduler.next_fire_time():%Y-%m-%d %H:%M}", flush=True)
    try:
        if args.once:
            with scheduler.lock():
                done = scheduler.tick()
        else:
            done = scheduler.run_forever()
    except KeyboardInterrupt:
        print("scheduler stopped", file=sys.stderr)
        return 130
    for entry in done:
        print(f"{entry.fire_time}  {entry.data_date}  {entry.outcome:<13}  {entry.run_id or '-'}  "
              f"{entry.version or entry.error or ''}")
    return 1 if any(entry.outcome == "failed" for entry in done) else 0


def cmd_run(args) -> int:
    from pipelines.local_run import RunFailedError, run_local

    config = load_config(args.config, args.overrides)
    try:
        summary = run_local(config, verbose=args.verbose, data_date=args.data_date, runner=args.runner)
    except RunFailedError as exc:
        print(f"twotower run: pipeline failed: {exc} (full log: {PIPELINE_LOG} in the run folder)",
              file=sys.stderr)
        return 1
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    metrics = summary["metrics"]
    index = summary["index"]
    print()
    print(f"run {summary['run_id']}  ->  {summary['run_dir']}/{SUMMARY_FILE}")
    recalls = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())
                        if k.startswith(("recall_at_", "ndcg_at_")) and v is not None)
    print(f"  quality   {recalls}  (popularity recall_at_10={metrics['popularity_recall_at_10']:.4f})")
    print(f"  index     {index['kind']} over {index['n_items']} items, recall@10 vs exact "
          f"{index['recall_at_10_vs_exact']:.3f}, {index['qps_batched']:.0f} queries/s batched"
          + (f" ({index['speedup_vs_brute_force']:.1f}x numpy brute force)"
             if index.get("speedup_vs_brute_force") else ""))
    state = f"published version {summary['version']}" if summary["published"] else "NOT published"
    print(f"  publish   {state}: " + "; ".join(summary["reasons"]))
    print("  seconds   " + "  ".join(f"{k}={v:.1f}" for k, v in summary["stage_seconds"].items()))


def cmd_compile(args) -> int:
    from pipelines.compile import compile_pipeline

    config = load_config(args.config, args.overrides)
    compile_pipeline(config, args.out)
    print(f"wrote {args.out} (image {config.pipeline.image})")
    return 0


def _request_from_args(args) -> dict:
    """The retriever request for ``twotower query``'s options."""
    request = ({"query": args.text} if args.text is not None
               else {"user_id": args.user_id} if args.user_id is not None else {})
    if args.history is not None:
        request["history"] = [item.strip() for item in args.history.split(",") if item.strip()]
    if not request:
        raise ConfigError("twotower query: give --text, --user-id or --history")
    return request


def cmd_query(args) -> int:
    from serving.retriever import Retriever

    retriever = Retriever.load(args.store, version=args.version, rerank=not args.no_rerank,
                                query_vectors=not args.no_query_vectors)
    answer = retriever.retrieve(_request_from_args(args), k=args.k, exclude_seen=args.exclude_seen)
    label = (args.text if args.text is not None else f"user_id={args.user_id}" if args.user_id is not None
             else "history only")
    note = answer.get("history")
    if note is not None:
        label += f"  (history: {note['used']} items used, {note['ignored']} unknown ignored, {note['cut']} cut)"
    if answer.get("reranked"):
        label += f"  (re-ranked by the pre-ranker: {answer['candidates']} candidates re-scored)"
    print(f"version {answer['version']}  query: {label}")
    for rank, (item, score) in enumerate(zip(answer["items"], answer["scores"]), start=1):
        fields = "  |  ".join(str(v) for k, v in item.items() if k != "item_id")
        print(f"{rank:3d}. {score:7.4f}  {item['item_id']}  {fields}")
    return 0


def cmd_retrieve(args) -> int:
    from serving.retriever import Retriever

    requests = []
    with open(args.queries, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{args.queries}: line {line_no}: not UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                requests.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{args.queries}: line {line_no}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ConfigError(f"{args.queries}: line {line_no}: JSON nested too deeply") from None
    retriever = Retriever.load(args.store, version=args.version, rerank=not args.no_rerank,
                                query_vectors=not args.no_query_vectors)
    answers = retriever.retrieve_batch(requests, k=args.k, exclude_seen=args.exclude_seen)
    with open(args.out, "w") as out:
        for request, answer in zip(requests, answers):
            key = request.get("user_id", request.get("query", request.get("features", request.get("history"))))
            out.write(json.dumps({"key": key, "items": [i["item_id"] for i in answer["items"]],
                                  "scores": answer["scores"], "version": answer["version"]}) + "\n")
    print(f"wrote {len(answers)} results to {args.out} (version {answers[0]['version'] if answers else '-'})")
    return 0


def cmd_index(args) -> int:
    from indexer.store import StoreError, VersionStore

    try:
        store = VersionStore(args.store)  # an empty --store is refused here
        store.check_root()
        handler = {"list": _index_list, "show": _index_show, "rollback": _index_rollback,
                   "gc": _index_gc}[args.index_command]
        return handler(store, args)
    except ValueError as exc:  # an invalid version id or store path: the user's input, not a bug
        raise StoreError(str(exc)) from None


def _index_list(store, args) -> int:
    from indexer.store import PointerError

    # A damaged CURRENT still lists the versions (what an operator can roll back to), then fails.
    try:
        store.current()
        damaged = None
    except PointerError as exc:
        damaged = exc
    for info in store.versions(strict_pointer=False):
        mark = "*" if info["live"] else " "
        print(f"{info['id']} {mark} created={info.get('created', '-')}"
              f"{'' if info.get('has_manifest', True) else ' (incomplete: no manifest)'}")
    if damaged is not None:
        raise damaged
    return 0


def _require_versions(store) -> list[dict]:
    from indexer.store import StoreError

    listed = store.versions(strict_pointer=False)  # a damaged CURRENT is each command's own concern
    if not listed:
        raise StoreError(f"store {store.root} has no versions (nothing was ever published there)")
    return listed


def _fmt_number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flat_metrics(metrics: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, dict):
            out.extend(_flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(f"{prefix}{key}={_fmt_number(value)}")
    return out


def _index_show(store, args) -> int:
    from indexer.store import StoreError

    _require_versions(store)
    live = store.current()
    version = args.version or live
    if version is None:
        raise StoreError(f"store {store.root} has no live version; name one (twotower index list)")
    manifest = store.read_manifest(version)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    files = manifest.get("files", {})
    gate = manifest.get("gate") or {}
    index = manifest.get("index") or {}
    print(f"version   {version}{'  (live)' if version == live else '  (not live; live is ' + str(live) + ')'}")
    print(f"created   {manifest.get('created', '-')}")
    print(f"run id    {manifest.get('run_id', '-')}")
    metrics = _flat_metrics(manifest.get("metrics") or {})
    print(f"metrics   {' '.join(metrics) if metrics else '-'}")
    if gate:
        print(f"gate      {'publish' if gate.get('publish') else 'reject'}"
              f"{': ' + '; '.join(gate.get('reasons', [])) if gate.get('reasons') else ''}")
    else:
        print("gate      -")
    if index:
        figures = [f"{k}={_fmt_number(index[k])}" for k in ("n_items", "dims", "recall_at_10_vs_exact",
                                                           "qps_batched", "qps_single", "build_seconds")
                   if k in index]
        print(f"index     {index.get('kind', '?')} {' '.join(figures)}".rstrip())
    else:
        print("index     -")
    total = sum(int(f.get("size", 0)) for f in files.values())
    print(f"files     {len(files)} files, {total} bytes")
    return 0


def _index_rollback(store, args) -> int:
    from indexer.store import PointerError

    _require_versions(store)
    try:
        old = store.current() or "-"
    except PointerError:  # rollback is how a damaged CURRENT is repaired
        old = "(damaged CURRENT)"
    store.rollback(args.to)
    print(f"CURRENT {old} -> {args.to}{' (already live)' if old == args.to else ''}")
    return 0


def _index_gc(store, args) -> int:
    listed = _require_versions(store)
    orphans = {v["id"] for v in listed if not v["has_manifest"]}
    deleted = store.gc(args.keep)
    for vid in deleted:
        print(f"deleted {vid}{' (orphan: no manifest)' if vid in orphans else ''}")
    print(f"{len(deleted)} deleted, {len(listed) - len(deleted)} kept (live: {store.current() or '-'})")
    return 0


def cmd_serve(args) -> int:
    import logging

    from serving.healthcheck import remove_address, write_address
    from serving.retriever import MAX_K
    from serving.server import serve

    if not args.poll_seconds > 0:
        raise ConfigError(f"--poll-seconds must be > 0, got {args.poll_seconds}")
    if not 1 <= args.max_k <= MAX_K:
        raise ConfigError(f"--max-k must be in 1..{MAX_K}, got {args.max_k}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_connections < 1:
        raise ConfigError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {args.max_batch}")
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def _started(service) -> None:
        write_address(service.url)  # for the image's HEALTHCHECK (only where TWOTOWER_HEALTH_FILE is set)
        print(f"twotower serve: listening on {service.url} (store {args.store}); SIGTERM/Ctrl-C to stop",
              flush=True)

    try:
        return serve(args.store, host=args.host, port=args.port, poll_seconds=args.poll_seconds,
                     max_k=args.max_k, on_started=_started, allow_hosts=args.allow_host,
                     max_connections=args.max_connections, max_batch=args.max_batch,
                     rerank=not args.no_rerank, query_vectors=not args.no_query_vectors)
    except OSError as exc:
        import errno

        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        raise
    finally:
        remove_address()
