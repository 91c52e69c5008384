"""HTTP layer benchmark: ``twotower serve`` (stdlib, serving/http.py) vs the same QueryService behind aiohttp.

    .venv/bin/pip install -r requirements-bench.txt     # aiohttp, for this bench only
    .venv/bin/python bench/http_layer.py                # 100,000 items, 3 repeats x 8 s cells (~8 min on 2 cores)
    .venv/bin/python bench/http_layer.py --repeats 1 --seconds 3 --slow-seconds 12

One store is built with bench/serve.py's ``build_store`` (same synthetic catalog, real query
tower SavedModel, ScaNN index; its argparse defaults, with ``--n`` 100,000 as its ``--quick``)
and served two ways at once, each in its own subprocess on 127.0.0.1, port 0:

- **stdlib**: the real ``python -m pipelines.cli serve --port 0 --poll-seconds 3600``
  (bench/serve.py's ``start_server``);
- **aiohttp**: ``bench/http_layer.py --serve-aiohttp``: a ``serving.server.QueryService`` whose
  own HTTP server is never started; ``poll_once()`` loads and warms the live version, and an
  ``aiohttp.web`` app routes ``POST /v1/retrieve`` to ``service.handle_retrieve`` on the
  loop's default thread pool and ``GET /healthz``, ``/readyz``, ``/v1/version`` to
  ``service.handle_get``. HttpError -> its status and ``{"error": ...}``; any other exception
  -> 500 ``{"error": "internal error"}``. It keeps the two checks of the stdlib layer that are
  not in QueryService: the Host policy (403) and Content-Type application/json (415).
  Settings: ``client_max_size`` = 64 KiB (the stdlib service's body limit); everything else
  aiohttp's defaults (recorded in the report: backlog, keep-alive timeout, header limits).

Cells, interleaved (for each cell the two servers back to back, the order alternating per
repeat, so noise on the shared cores hits both alike), ``--repeats`` rounds:

- ``keep-alive`` x 1 and 8 client *processes* (bench/serve.py's ``client``: one persistent
  connection, ``POST {"user_id": random, "k": 10}`` back to back for ``--seconds``);
- ``close`` x 1 and 8: the same, but a new TCP connection per request (``Connection: close``);
- ``slow``: ``--slow-connections`` sockets that each send a request line and then one header
  line per second (slowloris) for ``--slow-seconds`` (default 15 s: longer than the stdlib
  layer's 10 s header deadline, so its effect can show), while 1 keep-alive client measures;
  reported: that client's latency and errors, how many slow sockets the server closed, after
  how many seconds, and what it answered on them;
- ``fuzz``: the 2,000 seeded requests of tests/unit/serving/test_http_fuzz.py (its generator, seed,
  paths and 8 threads; the servers keep their default deadlines), counted by status; ">= 500"
  and "no response" (closed without a status line, or silent for 3 s: a body that never comes).

Latency is timed by the client to the end of the response body; p50 / p99 are nearest-rank,
as in bench/serve.py. Per cell the server's CPU seconds (utime + stime from /proc/<pid>/stat)
are recorded; per server its peak RSS (VmHWM). Output: Markdown on stdout and
``bench/results/http_layer-<UTC timestamp>.json`` / ``.md``. Everything stops by itself: client
processes after their window, slow sockets at the end of their cell, both servers on SIGTERM
(SIGKILL after 30 s) at the end or on any error.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
import core  # noqa: E402,F401 (sets the TF environment before anything imports TensorFlow)

from bench import serve as bench_serve  # noqa: E402  (bench/ is a namespace package; spawned clients import it too)

HOST = bench_serve.HOST
SERVERS = ("stdlib", "aiohttp")
#: (cell, concurrent clients), in the order each repeat runs them.
CELLS = (("keep-alive", 1), ("keep-alive", 8), ("close", 1), ("close", 8), ("slow", 1), ("fuzz", 8))
MAX_BODY_BYTES = 64 * 1024  # serving.server.MAX_BODY_BYTES (not imported here: the parent stays TF-free)
#: The query-service paths tests/unit/serving/test_http_fuzz.py fuzzes.
FUZZ_PATHS = ["/v1/retrieve"] * 6 + ["/readyz", "/healthz", "/v1/version", "/", "/v1/retrieve/", "/V1/RETRIEVE"]
INSTALL_HINT = "aiohttp is not installed; for this bench: .venv/bin/pip install -r requirements-bench.txt"


# -- the aiohttp server (runs in its own process: --serve-aiohttp) ------------------------------------
def aiohttp_settings() -> dict:
    """The aiohttp settings the bench server runs with: what it sets, and the installed defaults."""
    import inspect

    import aiohttp
    from aiohttp import web_protocol, web_runner

    handler = inspect.signature(web_protocol.RequestHandler.__init__).parameters
    site = inspect.signature(web_runner.TCPSite.__init__).parameters
    return {
        "aiohttp": aiohttp.__version__,
        "set": {"client_max_size": MAX_BODY_BYTES},
        "defaults": {**{name: handler[name].default for name in
                        ("keepalive_timeout", "max_line_size", "max_field_size", "max_headers", "lingering_time")},
                     "backlog": site["backlog"].default, "shutdown_timeout": site["shutdown_timeout"].default,
                     "executor": f"asyncio default ThreadPoolExecutor, max_workers min(32, cpus + 4) = "
                                 f"{min(32, (os.cpu_count() or 1) + 4)}",
                     "access_log": "aiohttp.access at INFO (off: logging at WARNING)"},
    }


def make_app(service):
    """The aiohttp.web app over ``service`` (a QueryService whose own HTTP server is not started)."""
    import asyncio
    import logging

    from aiohttp import web

    from serving.http import HttpError
    from serving.server import GET_PATHS, RETRIEVE_PATH

    log = logging.getLogger("twotower.bench.aiohttp")

    def refused(exc: HttpError) -> web.Response:
        return web.json_response({"error": str(exc)}, status=exc.status, headers=exc.headers)

    async def retrieve(request: web.Request) -> web.Response:
        try:
            service.host_policy.check(request.headers.get("Host"))
            ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                raise HttpError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
            raw = await request.read()  # past client_max_size: aiohttp's own 413
            status, body = await asyncio.get_running_loop().run_in_executor(None, service.handle_retrieve, raw)
        except HttpError as exc:
            return refused(exc)
        except web.HTTPException:
            raise  # aiohttp's own answers (413 from client_max_size)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)
        return web.json_response(body, status=status)

    async def get(request: web.Request) -> web.Response:
        try:
            service.host_policy.check(request.headers.get("Host"))
            status, body = service.handle_get(request.path)
        except HttpError as exc:
            return refused(exc)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)
        return web.json_response(body, status=status)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(RETRIEVE_PATH, retrieve)
    for path in GET_PATHS:
        app.router.add_get(path, get)  # HEAD too (aiohttp's allow_head default)
    return app


def serve_aiohttp(store: str) -> int:
    """``--serve-aiohttp``: load the live version, serve it with aiohttp until SIGTERM; returns the exit code."""
    import asyncio
    import logging
    import signal

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web

    from serving.server import QueryService

    service = QueryService(store, host=HOST, port=0, poll_seconds=3600)
    service.poll_once()
    if service.live() is None:
        print(f"no version loaded: {service.status()['reason']}", file=sys.stderr, flush=True)
        return 1

    async def run() -> None:
        runner = web.AppRunner(make_app(service))
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"http_layer aiohttp: listening on http://{HOST}:{runner.addresses[0][1]}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())
    return 0


# -- server processes (parent side) ----------------------------------------------------------------
def start_aiohttp(store: str, work: str, ready_timeout: float) -> tuple[subprocess.Popen, int]:
    """Start ``--serve-aiohttp`` on 127.0.0.1:<free port>; wait for /readyz 200; return (proc, port)."""
    out_path, err_path = os.path.join(work, "serve.stdout"), os.path.join(work, "serve.stderr")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-aiohttp", "--store", store],
                                cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    marker = f"listening on http://{HOST}:"
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"aiohttp server exited with {proc.returncode}: {bench_serve._tail(err_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"aiohttp server not ready within {ready_timeout}s: {bench_serve._tail(err_path)}")
            with open(out_path) as fh:
                text = fh.read()
            if marker in text:
                port = int(text.split(marker)[1].split()[0])
                if bench_serve._get(port, "/readyz")[0] == 200:
                    return proc, port
            time.sleep(0.2)
    except BaseException:
        bench_serve.stop_server(proc)
        raise


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, MiB."""
    return bench_serve.rss_mb(pid, "VmHWM")


#: A logging record at level ERROR in the servers' format ("%(asctime)s %(levelname)s %(name)s: ..."); not
#: TensorFlow's C++ lines (its cuInit line says "UNKNOWN ERROR (303)").
_ERROR_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ ERROR ", re.M)


def log_facts(path: str) -> dict:
    """What a server's stderr log holds: app-level 500s, ERROR records (any logger), size in KiB."""
    try:
        with open(path, errors="replace") as fh:
            text = fh.read()
    except OSError:
        return {}
    return {"internal_errors_logged": text.count("internal error on"),
            "error_records": len(_ERROR_RECORD.findall(text)), "log_kib": round(len(text.encode()) / 1024, 1)}


# -- clients ---------------------------------------------------------------------------------------
#: bench/serve.py's client with a new TCP connection per request (picklable for spawned processes).
close_client = functools.partial(bench_serve.client, close_each=True)


def run_clients(target, port: int, clients: int, users: int, k: int, seconds: float, seed: int) -> dict:
    """``clients`` spawned processes running ``target``: bench/serve.py's ``load_test``."""
    return bench_serve.load_test(port, clients, users, k, seconds, seed, target=target)


class SlowClients:
    """``count`` connections that each send a request line, then one header line every ``interval`` s.

    A background thread drips the headers and watches (every 0.1 s) for the server closing a
    connection or answering on it; :meth:`stop` ends the drip and returns what it saw.
    """

    def __init__(self, port: int, count: int, interval: float = 1.0):
        self.port, self.count, self.interval = port, count, interval
        self.socks: dict[socket.socket, float] = {}  # open socket -> monotonic time it was opened
        self.closed_after: list[float] = []  # seconds from open to the server's close
        self.answers: dict[str, int] = {}  # first status line seen on a slow connection -> count
        self.connect_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> "SlowClients":
        line = f"POST /v1/retrieve HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n".encode()
        for _ in range(self.count):
            try:
                sock = socket.create_connection((HOST, self.port), timeout=5)
                sock.sendall(line)
                sock.setblocking(False)
                self.socks[sock] = time.monotonic()
            except OSError:
                self.connect_errors += 1
        self._thread.start()
        return self

    def _closed(self, sock: socket.socket, data: bytes = b"") -> None:
        if data.startswith(b"HTTP/"):
            status = data.split(b"\r\n", 1)[0].decode("latin-1")[:40]
            self.answers[status] = self.answers.get(status, 0) + 1
        self.closed_after.append(round(time.monotonic() - self.socks.pop(sock), 2))
        sock.close()

    def _watch(self) -> None:
        readable, _, _ = select.select(list(self.socks), [], [], 0.1) if self.socks else ([], [], [])
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            self._closed(sock, data)  # an answer or EOF: either way the request is over

    def _drip(self, n: int) -> None:
        for sock in list(self.socks):
            try:
                sock.send(f"X-Slow-{n}: 1\r\n".encode())
            except (BlockingIOError, InterruptedError):
                pass  # buffer full: the server is not reading; still open
            except OSError:
                self._closed(sock)

    def _run(self) -> None:
        n, next_drip = 0, time.monotonic() + self.interval
        while not self._stop.is_set():
            self._watch()
            if time.monotonic() >= next_drip:
                n += 1
                self._drip(n)
                next_drip += self.interval

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=5)
        still_open = len(self.socks)
        for sock in list(self.socks):
            sock.close()
        self.socks.clear()
        closed = sorted(self.closed_after)
        return {"slow_connections": self.count, "connect_errors": self.connect_errors,
                "closed_by_server": len(closed), "still_open": still_open,
                "closed_after_s": {"min": closed[0], "median": statistics.median(closed), "max": closed[-1]}
                if closed else None, "answers": self.answers}


def fuzz(port: int) -> dict:
    """tests/unit/serving/test_http_fuzz.py's 2,000 service requests (its seed, 8 threads); statuses counted."""
    from tests.unit.serving import test_http_fuzz as tf

    host = f"{HOST}:{port}"
    started = time.monotonic()
    counts = tf._fuzz(port, tf.N_SERVICE, lambda rng: tf._request(rng, FUZZ_PATHS, tf._service_body, host,
                                                                   lambda r: []))
    seconds = round(time.monotonic() - started, 1)
    return {"requests": sum(counts.values()), "seconds": seconds,
            "statuses": {str(s): c for s, c in sorted(counts.items(), key=lambda sc: (sc[0] is None, sc[0] or 0))},
            "5xx": sum(c for s, c in counts.items() if s is not None and s >= 500),
            "no_response": counts.get(None, 0), "ready_after": bench_serve._get(port, "/readyz")[0]}


# -- one cell --------------------------------------------------------------------------------------
def run_cell(cell: str, clients: int, server: dict, args, seed: int) -> dict:
    """One measurement against ``server`` ({"proc", "port"}); the figures plus its CPU seconds."""
    port, pid = server["port"], server["proc"].pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    if cell == "keep-alive":
        out = run_clients(bench_serve.client, port, clients, args.users, args.k, args.seconds, seed)
    elif cell == "close":
        out = run_clients(close_client, port, clients, args.users, args.k, args.seconds, seed)
    elif cell == "slow":
        slow = SlowClients(port, args.slow_connections).start()
        try:
            out = run_clients(bench_serve.client, port, 1, args.users, args.k, args.slow_seconds, seed)
        finally:
            out_slow = slow.stop()
        out.update(out_slow)
    else:
        out = fuzz(port)
    if server["proc"].poll() is not None:
        raise RuntimeError(f"{server['name']} server died during {cell}: {bench_serve._tail(server['err'])}")
    out["cpu_s"] = round(cpu_seconds(pid) - cpu0, 2)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    if out.get("requests") and cell != "fuzz":
        out["cpu_ms_per_query"] = round(out["cpu_s"] * 1000 / out["requests"], 2)
    return {"cell": cell, "clients": clients, "server": server["name"], **out}


# -- report ----------------------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def summarise(results: list[dict]) -> dict:
    """Per (cell, clients, server): medians over repeats; per (cell, clients): per-repeat aiohttp/stdlib ratios."""
    keys = [c for c in CELLS if any((r["cell"], r["clients"]) == c for r in results)]
    out = {}
    for cell, clients in keys:
        by = {s: [r for r in results if (r["cell"], r["clients"], r["server"]) == (cell, clients, s)]
              for s in SERVERS}
        entry = {"medians": {s: {m: _median([r.get(m) for r in rows]) for m in
                                 ("requests", "errors", "p50_ms", "p99_ms", "max_ms", "qps", "cpu_s",
                                  "cpu_ms_per_query", "closed_by_server", "seconds", "5xx", "no_response")}
                             for s, rows in by.items()}}
        entry["ratios"] = {m: [_ratio(a.get(m), b.get(m)) for a, b in zip(by["aiohttp"], by["stdlib"])]
                           for m in ("p50_ms", "p99_ms", "max_ms", "qps", "cpu_ms_per_query")}
        out[f"{cell} x{clients}"] = entry
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def markdown(report: dict) -> str:
    s, results = report["summary"], report["results"]
    a = report["args"]
    lines = [f"{a['n']:,} items x {bench_serve.DIMS} dims, {a['users']:,} users, k={a['k']}; {a['repeats']} "
             f"repeats, {a['seconds']:g} s per load cell, {a['slow_seconds']:g} s slow cell; {report['date_utc']}; "
             f"`{report['command']}`; {report['cpus']} CPU cores shared by servers and clients.", "",
             "### Load (median over repeats; ratio = aiohttp / stdlib, per repeat)", "",
             "| cell | server | requests | errors | p50 ms | p99 ms | max ms | queries/s | server CPU ms/query |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, e in s.items():
        if key.startswith(("slow", "fuzz")):
            continue
        for srv in SERVERS:
            m = e["medians"][srv]
            lines.append(f"| {key} | {srv} | {_fmt(m['requests'])} | {_fmt(m['errors'])} | {_fmt(m['p50_ms'])} | "
                         f"{_fmt(m['p99_ms'])} | {_fmt(m['max_ms'])} | {_fmt(m['qps'])} | "
                         f"{_fmt(m['cpu_ms_per_query'])} |")
    lines += ["", "| cell | p50 ratio | p99 ratio | max ratio | queries/s ratio | CPU/query ratio |",
              "|---|---|---|---|---|---|"]
    for key, e in s.items():
        if key.startswith("fuzz"):
            continue
        r = e["ratios"]
        lines.append(f"| {key} | " + " | ".join(
            f"{', '.join(_fmt(x) for x in r[m])} (median {_fmt(_median(r[m]))})"
            for m in ("p50_ms", "p99_ms", "max_ms", "qps", "cpu_ms_per_query")) + " |")
    lines += ["", f"### Slow clients: {a['slow_connections']} connections each sending one header line per "
                  f"second for {a['slow_seconds']:g} s, 1 keep-alive client measuring", "",
              "| server | repeat | normal p50 ms | p99 ms | max ms | requests | errors | slow closed by server | "
              "closed after s (min / median / max) | answers on slow connections |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results if r["cell"] == "slow"):
        after = r["closed_after_s"]
        lines.append(f"| {r['server']} | {r['repeat']} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | "
                     f"{_fmt(r['max_ms'])} | {_fmt(r['requests'])} | {r['errors']} | "
                     f"{r['closed_by_server']} of {r['slow_connections']} | "
                     f"{'-' if not after else ' / '.join(_fmt(after[x]) for x in ('min', 'median', 'max'))} | "
                     f"{json.dumps(r['answers']) if r['answers'] else '-'} |")
    lines += ["", "### Fuzz: tests/unit/serving/test_http_fuzz.py's 2,000 query-service requests, 8 threads", "",
              "| server | repeat | statuses | >= 500 | no response | seconds | /readyz after |",
              "|---|---|---|---|---|---|---|"]
    for r in (r for r in results if r["cell"] == "fuzz"):
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"| {r['server']} | {r['repeat']} | {statuses} | {r['5xx']} | {r['no_response']} | "
                     f"{r['seconds']:g} | {r['ready_after']} |")
    lines += ["", "### Servers", "", "| server | start to ready s | recall@k vs exact | CPU s over all cells | "
              "peak RSS MiB | RSS at end MiB | app 500s logged | ERROR log records | log KiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in SERVERS:
        v = report["servers"][name]
        lines.append(f"| {name} | {v['seconds_to_ready']} | {v['recall_at_k_vs_exact']} | {v['cpu_s_cells']} | "
                     f"{v['peak_rss_mb']} | {v['rss_mb_end']} | {v.get('internal_errors_logged')} | "
                     f"{v.get('error_records')} | {v.get('log_kib')} |")
    st = report["aiohttp_settings"]
    lines += ["", f"aiohttp {st['aiohttp']}: set {json.dumps(st['set'])}; defaults {json.dumps(st['defaults'])}. "
                  f"Wall time {report['wall_s']:g} s (store build {report['build_s']:g} s)."]
    errs = [r for r in results if r.get("first_error")]
    for r in errs:
        lines.append(f"- first error, {r['server']} {r['cell']} x{r['clients']} repeat {r['repeat']}: "
                     f"{r['first_error']}")
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # bench/serve.py's defaults, with --n at its --quick size.
    ap.add_argument("--n", type=int, default=100_000, help="catalog size (default 100,000)")
    ap.add_argument("--clusters", type=int, default=1500)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--users", type=int, default=10_000, help="query table size (user ids u0..)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-users", type=int, default=200, help="users whose served top-k is checked vs exact")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds a server may take to load")
    # this bench
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring window per load cell, s")
    ap.add_argument("--slow-seconds", type=float, default=15.0,
                    help="slow-client cell length, s (default 15: past the stdlib layer's 10 s header deadline)")
    ap.add_argument("--slow-connections", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"), help="where the .json / .md go")
    ap.add_argument("--work-dir", default="", help="where the store goes (default: a temp folder, deleted)")
    ap.add_argument("--serve-aiohttp", action="store_true", help=argparse.SUPPRESS)  # the child server mode
    ap.add_argument("--store", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.serve_aiohttp and (args.n < 1000 or args.repeats < 1 or args.seconds <= 0
                                   or args.slow_seconds <= 0 or args.slow_connections < 1):
        ap.error("need --n >= 1000, --repeats >= 1, --seconds > 0, --slow-seconds > 0, --slow-connections >= 1")
    return args


def start_servers(store: str, work: str, args, log) -> dict:
    """Both servers, ready; name -> {"name", "proc", "port", "err", "seconds_to_ready"}."""
    servers = {}
    try:
        for name in SERVERS:
            sub = os.path.join(work, name)
            os.makedirs(sub, exist_ok=True)
            t = time.monotonic()
            if name == "stdlib":
                # --max-batch 1: the aiohttp app calls QueryService without its coalescer, so both
                # servers answer each request alone and only the HTTP layers differ.
                proc, port, _, err = bench_serve.start_server(store, sub, args.ready_timeout, log,
                                                              ("--max-batch", "1"))
            else:
                proc, port = start_aiohttp(store, sub, args.ready_timeout)
                err = os.path.join(sub, "serve.stderr")
            servers[name] = {"name": name, "proc": proc, "port": port, "err": err,
                             "seconds_to_ready": round(time.monotonic() - t, 1)}
            log(f"{name} server ready on {HOST}:{port} after {servers[name]['seconds_to_ready']} s")
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict) -> None:
    for server in servers.values():
        bench_serve.stop_server(server["proc"])


def measure(servers: dict, args, log) -> list[dict]:
    """All cells x repeats, the two servers back to back per cell, their order alternating per repeat."""
    results = []
    for repeat in range(args.repeats):
        order = SERVERS if repeat % 2 == 0 else SERVERS[::-1]
        for cell, clients in CELLS:
            for name in order:
                r = run_cell(cell, clients, servers[name], args, seed=args.seed + repeat)
                r["repeat"] = repeat + 1
                results.append(r)
                log(f"repeat {repeat + 1} {cell} x{clients} {name}: " + ", ".join(
                    f"{m} {r[m]}" for m in ("requests", "errors", "p50_ms", "p99_ms", "qps", "closed_by_server",
                                            "5xx", "no_response", "cpu_s") if m in r))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve_aiohttp:
        return serve_aiohttp(args.store)
    if importlib.util.find_spec("aiohttp") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = args.work_dir or tempfile.mkdtemp(prefix="twotower-bench-http-")
    os.makedirs(work, exist_ok=True)
    servers = {}
    try:
        build = bench_serve.build_store(args, os.path.join(work, "store"), log)
        build_s = round(time.monotonic() - started, 1)
        servers = start_servers(os.path.join(work, "store"), work, args, log)
        exact = build.pop("exact")
        info = {name: {"seconds_to_ready": s["seconds_to_ready"],
                       "recall_at_k_vs_exact": bench_serve.served_recall(s["port"], exact, args.k)}
                for name, s in servers.items()}
        cpu0 = {name: cpu_seconds(s["proc"].pid) for name, s in servers.items()}
        results = measure(servers, args, log)
        for name, s in servers.items():
            info[name].update(cpu_s_cells=round(cpu_seconds(s["proc"].pid) - cpu0[name], 1),
                              peak_rss_mb=peak_rss_mb(s["proc"].pid), rss_mb_end=bench_serve.rss_mb(s["proc"].pid),
                              **log_facts(s["err"]))
    finally:
        stop_servers(servers)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report = {"date_utc": stamp, "command": " ".join(["bench/http_layer.py"] + (sys.argv[1:] if argv is None
                                                                                 else list(argv))),
              "args": {k: v for k, v in vars(args).items() if k not in ("serve_aiohttp", "store")},
              "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
              "aiohttp_settings": aiohttp_settings(), "build": build, "build_s": build_s, "servers": info,
              "results": results, "summary": summarise(results), "wall_s": round(time.monotonic() - started, 1)}
    text = markdown(report)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    bench_serve._bench_index().write_report(os.path.join(args.out, f"http_layer-{stamp}"), report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
