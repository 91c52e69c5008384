"""``twotower ui --runs DIR --store DIR [--host 127.0.0.1] [--port 8090] [--token T] [--allow-host NAME]``.

:func:`add_ui_parser` adds the sub-command to the ``twotower`` parser and :func:`cmd_ui`
runs it; ``python -m ui`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_PORT = 8090


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``ui`` to a ``parser.add_subparsers()`` object; returns the new sub-parser."""
    ui = subparsers.add_parser("ui", help="local web page: runs, versions (with rollback) and a query box")
    ui.add_argument("--runs", required=True, help="the runs folder (pipeline.runs_dir, e.g. runs)")
    ui.add_argument("--store", required=True, help="store folder or gs:// prefix (publish.store)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"port to bind (default {DEFAULT_PORT}; 0 = any free port)")
    ui.add_argument("--token", help="the token rollbacks must present (default: a random one, printed at start)")
    ui.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also answer requests whose Host is NAME (repeatable; '*' = any); IP addresses and "
                         "localhost always are")
    ui.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                    help="least severe log lines printed to stderr (default WARNING)")
    return ui


def _error(message: str) -> int:
    print(f"twotower ui: error: {message}", file=sys.stderr)
    return 2


def cmd_ui(args) -> int:
    """Serve the UI until SIGTERM / Ctrl-C. Returns 0, or 2 with a one-line message on bad input."""
    import errno
    import logging

    from serving.http import run_until_stopped
    from ui.server import UIServer

    if not os.path.isdir(args.runs):
        return _error(f"--runs {args.runs} is not a folder")
    if not 0 <= args.port <= 65535:
        return _error(f"--port must be in 0..65535, got {args.port}")
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.token is not None and len(args.token) < 16:
        return _error("--token must be at least 16 characters (or leave it out for a random one)")
    server = UIServer(args.runs, args.store, host=args.host, port=args.port, token=args.token,
                      allow_hosts=args.allow_host)
    try:
        server.start()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            return _error(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
        raise

    def _announce() -> None:  # the server is already up: bind errors were answered above
        print(f"twotower ui: open {server.url}/ (runs {args.runs}, store {args.store}); Ctrl-C to stop\n"
              f"  rollbacks from scripts need the header X-Twotower-Token: {server.app.token}", flush=True)

    run_until_stopped(_announce, server.stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui")
    add_ui_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_ui(parser.parse_args(["ui", *(sys.argv[1:] if argv is None else argv)]))
