"""``twotower ui`` without a browser: reading hand-made run folders, the pages' escaping, and
the HTTP server's routes (files, rollback, API) against a tiny hand-made store.

Run folders here mimic what pipelines/local_run.py writes (see ui/runs.py's docstring);
every expected value is written into the folder by the test itself.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest

from core.store import VersionStore
from ui import page, runs, versions
from ui.query import QueryError, RetrieverCache, parse_k
from ui.server import UIServer
from tests.support.ui_runs import (ALL_STAGES, EVAL_RESULT, PIPELINE_RUN, SUMMARY, TASKS, make_run, make_stage, publish,
                                   write_json)


def run_json(run_id, status, **kw):
    base = {"run_id": run_id, "status": status, "started_at": "2026-11-22T08:00:00Z", "finished_at": None,
            "data_date": None, "data_fingerprint": None, "error": None, "failed_step": None,
            "published": None, "version": None}
    return {**base, **kw}


# -- run folders --------------------------------------------------------------------------------
def test_succeeded_run_with_run_json(tmp_path):
    rid = "20261122T080000Z-aaaaaa"
    make_run(tmp_path, rid, run_json(rid, "succeeded", finished_at="2026-11-22T08:05:00+00:00",
                                     data_date="2026-11-21", data_fingerprint="f" * 64, published=True, version="v2"),
             SUMMARY, ALL_STAGES)
    make_stage(os.path.join(tmp_path, rid), "train", 10.0, {"best_epoch": 2}, report="<h1>train report</h1>")
    run = runs.read_run(str(tmp_path), rid)
    assert run["status"] == "succeeded"
    assert run["started_at"] == "2026-11-22T08:00:00Z" and run["finished_at"] == "2026-11-22T08:05:00Z"
    assert run["data_date"] == "2026-11-21" and run["data_fingerprint"] == "f" * 64
    assert run["published"] is True and run["version"] == "v2"
    assert run["metrics"] == {"recall_at_10": 0.5, "popularity_recall_at_10": 0.125, "ndcg_at_10": 0.25,
                              "index_recall_at_10_vs_exact": 0.96875}
    assert run["log"] == f"{rid}/pipeline.log"
    assert [s["name"] for s in run["steps"]] == ["ingest", "transform", "train", "evaluate", "embed", "index",
                                                 "gate-and-publish"]
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 7
    assert [s["seconds"] for s in run["steps"]] == [0.5, 2.0, 10.0, 1.5, 1.0, 0.75, 0.25]
    assert run["total_seconds"] == 16.0
    train = run["steps"][2]
    assert train["report_html"] == f"{rid}/kfp/{PIPELINE_RUN}/train/model/report.html"
    assert train["result"] == {"best_epoch": 2}
    assert {f["path"] for f in train["files"]} == {f"{rid}/kfp/{PIPELINE_RUN}/train/model/stage.json",
                                                  train["report_html"]}
    assert run["steps"][0]["report_html"] is None


def test_old_runs_without_run_json(tmp_path):
    make_run(tmp_path, "20261121T223022Z-b2627a", summary={**SUMMARY, "published": False, "version": None},
             stages=ALL_STAGES, task_suffix="-op")  # KFP task folders named <component>-op
    make_run(tmp_path, "20261121T220000Z-cccccc", stages=ALL_STAGES[:2], task_suffix="-op")
    done = runs.read_run(str(tmp_path), "20261121T223022Z-b2627a")
    assert done["status"] == "succeeded" and done["published"] is False and done["version"] is None
    assert done["started_at"] == "2026-11-21T22:30:22Z"  # from the run id
    assert done["finished_at"] == "2026-11-21T22:31:12Z"  # from summary.json
    assert done["data_fingerprint"] == "abc123"  # from ingest's result
    assert [s["status"] for s in done["steps"]] == ["succeeded"] * 7
    broken = runs.read_run(str(tmp_path), "20261121T220000Z-cccccc")
    assert broken["status"] == "failed" and "did not finish" in broken["error"]
    assert [s["status"] for s in broken["steps"]] == ["succeeded"] * 2 + ["not run"] * 5
    assert broken["published"] is None


def test_failed_run_marks_the_failed_step(tmp_path):
    rid = "20261122T090000Z-dddddd"
    path = make_run(tmp_path, rid, run_json(rid, "failed", error="train: loss is NaN", failed_step="train"),
                    stages=ALL_STAGES[:2])
    os.makedirs(os.path.join(path, "kfp", PIPELINE_RUN, "train"))  # the task started, wrote no stage.json
    run = runs.read_run(str(tmp_path), rid)
    assert run["status"] == "failed" and run["error"] == "train: loss is NaN"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded", "failed"] + ["not run"] * 4
    assert run["steps"][2]["error"] == "train: loss is NaN" and run["steps"][0]["error"] is None
    assert run["steps"][2]["seconds"] is None and run["steps"][2]["folder"] == f"{rid}/kfp/{PIPELINE_RUN}/train"
    assert run["metrics"] == dict.fromkeys(["recall_at_10", "popularity_recall_at_10", "ndcg_at_10",
                                            "index_recall_at_10_vs_exact"])


def test_stage_error_file_marks_a_failed_step(tmp_path):
    """A stage that raised leaves stage_error.json beside its outputs; the page shows why."""
    rid = "20261121T230000Z-000004"  # an old run: no run.json to name the failed step
    path = make_run(tmp_path, rid, stages=ALL_STAGES[:1])
    task, output = TASKS["transform"]
    write_json(os.path.join(path, "kfp", PIPELINE_RUN, task, output, "stage_error.json"),
                {"stage": "transform", "error": "TransformError: no rows", "seconds": 1.25})
    run = runs.read_run(str(tmp_path), rid)
    transform = run["steps"][1]
    assert transform["status"] == "failed" and transform["error"] == "TransformError: no rows"
    assert transform["seconds"] == 1.25 and transform["result"] is None
    assert [s["status"] for s in run["steps"][2:]] == ["not run"] * 5
    assert "TransformError: no rows" in page.run_page(run)


def test_failed_publish_keeps_metrics_measured_before_it(tmp_path):
    rid = "20261122T100000Z-eeeeee"
    make_run(tmp_path, rid, run_json(rid, "failed", error="store unreachable", failed_step="gate-and-publish"),
             stages=ALL_STAGES[:6])
    run = runs.read_run(str(tmp_path), rid)
    assert run["steps"][-1]["status"] == "failed"
    assert run["metrics"] == {"recall_at_10": 0.25, "popularity_recall_at_10": 0.0625, "ndcg_at_10": 0.125,
                              "index_recall_at_10_vs_exact": 1.0}


def test_running_run(tmp_path):
    rid = "20261122T110000Z-ffffff"
    path = make_run(tmp_path, rid, run_json(rid, "running"), stages=ALL_STAGES[:3])
    os.makedirs(os.path.join(path, "kfp", PIPELINE_RUN, "evaluate"))
    run = runs.read_run(str(tmp_path), rid)
    assert run["status"] == "running"
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3 + ["running"] + ["pending"] * 3


def test_running_run_whose_process_is_gone_is_shown_failed(tmp_path):
    """run.json names its owner; one that is gone (here: our pid with another start time, as
    after pid reuse) makes the run failed, in the listing, the run page and run.json itself,
    and writes the store's run record. A running run without an owner (older runs) is left."""
    from run_records.records import process_identity

    dead = {**process_identity(), "started": "another-boot:1"}
    store = tmp_path / "store"
    rid = "20261122T110000Z-dead00"
    path = make_run(tmp_path, rid, run_json(rid, "running", owner=dead, store=str(store)), stages=ALL_STAGES[:3])
    os.makedirs(os.path.join(path, "kfp", PIPELINE_RUN, "evaluate"))
    legacy = "20261122T100000Z-legacy"
    make_run(tmp_path, legacy, run_json(legacy, "running"))
    listed = {r["run_id"]: r for r in runs.list_runs(str(tmp_path))}
    want = f"process {dead['pid']} ended without finishing the run (killed?)"
    assert (listed[rid]["status"], listed[rid]["error"]) == ("failed", want)
    assert listed[legacy]["status"] == "running"
    run = runs.read_run(str(tmp_path), rid)
    assert run["status"] == "failed" and [s["status"] for s in run["steps"]][:4] == ["succeeded"] * 3 + ["not run"]
    with open(os.path.join(path, "run.json")) as fh:
        assert json.load(fh)["status"] == "failed"
    (record,) = VersionStore(str(store)).run_records()
    assert (record["run_id"], record["state"], record["error"]) == (rid, "FAILED", want)


def test_damaged_json_is_a_problem_not_a_crash(tmp_path):
    rid = "20261122T120000Z-000001"
    path = make_run(tmp_path, rid)
    with open(os.path.join(path, "run.json"), "w") as fh:
        fh.write('{"status": "runn')  # caught mid-write
    run = runs.read_run(str(tmp_path), rid)
    assert run["status"] == "failed"
    assert any("run.json could not be read" in p for p in run["problems"])


def test_list_runs_newest_first_and_skips_other_folders(tmp_path):
    make_run(tmp_path, "20261121T100000Z-000001", summary=SUMMARY)
    make_run(tmp_path, "20261122T100000Z-000002", summary=SUMMARY)
    rid = "20261120T000000Z-000003"  # older id, but run.json says it started last
    make_run(tmp_path, rid, run_json(rid, "running", started_at="2026-11-23T00:00:00Z"))
    os.makedirs(tmp_path / "store" / "versions")  # the default store lives in runs/
    (tmp_path / "notes.txt").write_text("x")
    assert [r["run_id"] for r in runs.list_runs(str(tmp_path))] == [rid, "20261122T100000Z-000002",
                                                                   "20261121T100000Z-000001"]
    assert runs.list_runs(str(tmp_path / "absent")) == []


@pytest.mark.parametrize("name,key", [("train", "train"), ("train-op", "train"), ("gate-and-publish", "publish"),
                                      ("publish-op", "publish"), (None, None)])
def test_normalize_step(name, key):
    assert runs.normalize_step(name) == key


@pytest.mark.parametrize("run_id", ["..", ".", "a/b", "", "../runs"])
def test_run_ids_with_path_syntax_are_not_found(tmp_path, run_id):
    with pytest.raises(runs.RunNotFoundError):
        runs.read_run(str(tmp_path), run_id)


def test_resolve_file_stays_inside_the_runs_folder(tmp_path):
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "20261122T080000Z-aaaaaa")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", runs_dir / "20261122T080000Z-aaaaaa" / "link.txt")
    ok = runs.resolve_file(str(runs_dir), "20261122T080000Z-aaaaaa/pipeline.log")
    assert ok == os.path.realpath(runs_dir / "20261122T080000Z-aaaaaa" / "pipeline.log")
    for bad in ["../secret.txt", "20261122T080000Z-aaaaaa/../../secret.txt", str(tmp_path / "secret.txt"),
                "20261122T080000Z-aaaaaa/link.txt", "20261122T080000Z-aaaaaa", "missing.txt", "", "a\x00b"]:
        with pytest.raises(runs.FileAccessError):
            runs.resolve_file(str(runs_dir), bad)


# -- pages --------------------------------------------------------------------------------------
def test_pages_escape_data(tmp_path):
    rid = "20261122T130000Z-000001"
    make_run(tmp_path, rid, run_json(rid, "failed", error="<script>alert(1)</script>", failed_step="train",
                                     data_date='"><img src=x onerror=alert(2)>'),
             stages=[("ingest", 1.0, {"<b>key</b>": "<i>value</i>"})])
    html = page.run_page(runs.read_run(str(tmp_path), rid)) + page.runs_page(runs.list_runs(str(tmp_path)), "r")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "<b>key</b>" not in html and "<i>value</i>" not in html
    answer = {"version": "v1", "query": "<q>", "k": 1, "display_fields": ["title"],
              "results": [{"rank": 1, "item_id": "<id>", "score": 0.5, "fields": {"title": "<t>"}}]}
    listing = {"store": "s", "live": "v1", "versions": []}
    html = page.query_page(listing, {"q": '"><x>', "mode": "text", "k": "1", "version": ""}, answer=answer)
    assert "<q>" not in html and "<id>" not in html and "<t>" not in html and '"><x>' not in html


def test_only_pages_with_a_running_run_refresh_themselves(tmp_path):
    rid = "20261122T110000Z-ffffff"
    make_run(tmp_path, rid, run_json(rid, "running"))
    assert 'http-equiv="refresh"' in page.run_page(runs.read_run(str(tmp_path), rid))
    assert 'http-equiv="refresh"' in page.runs_page(runs.list_runs(str(tmp_path)), "r")
    done = "20261122T100000Z-000002"
    make_run(tmp_path, done, summary=SUMMARY)
    assert 'http-equiv="refresh"' not in page.run_page(runs.read_run(str(tmp_path), done))


def test_cli_parser_and_bad_input(tmp_path, capsys):
    import argparse

    from ui.cli import add_ui_parser, cmd_ui

    parser = argparse.ArgumentParser(prog="twotower")
    add_ui_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ui", "--runs", str(tmp_path / "absent"), "--store", str(tmp_path / "store")])
    assert (args.host, args.port) == ("127.0.0.1", 8090)
    assert cmd_ui(args) == 2 and "is not a folder" in capsys.readouterr().err
    args = parser.parse_args(["ui", "--runs", str(tmp_path), "--store", "s", "--port", "70000"])
    assert cmd_ui(args) == 2 and "--port must be in 0..65535" in capsys.readouterr().err


def test_parse_k():
    assert parse_k("10") == 10 and parse_k(5) == 5
    for bad in ("0", "101", "x", True, 2.5, None):
        with pytest.raises(QueryError):
            parse_k(bad)


@pytest.fixture
def site(tmp_path):
    runs_dir, store = tmp_path / "runs", tmp_path / "store"
    make_run(runs_dir, "20261122T080000Z-aaaaaa", summary=SUMMARY, stages=ALL_STAGES)
    publish(store, tmp_path, "20261122T080100000000Z-000001", "20261122T080000Z-aaaaaa", 0.4)
    publish(store, tmp_path, "20261122T090100000000Z-000002", "20261122T090000Z-bbbbbb", 0.5)
    with UIServer(str(runs_dir), str(store), port=0) as server:
        yield server, runs_dir, store


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def _post(url, body, ctype="application/json", headers=None):
    data = json.dumps(body).encode() if ctype == "application/json" else urllib.parse.urlencode(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype, **(headers or {})})
    return _get(req)


def test_list_versions_newest_first_with_metrics(site):
    _, _, store = site
    listing = versions.list_versions(str(store))
    assert listing["live"] == "20261122T090100000000Z-000002"
    assert [v["id"] for v in listing["versions"]] == ["20261122T090100000000Z-000002",
                                                      "20261122T080100000000Z-000001"]
    newest = listing["versions"][0]
    assert newest["live"] and newest["complete"] and newest["run_id"] == "20261122T090000Z-bbbbbb"
    assert newest["metrics"]["recall_at_10"] == 0.5 and newest["metrics"]["popularity_recall_at_10"] == 0.1


def test_server_pages_and_api(site):
    server, _, _ = site
    status, _, html = _get(server.url + "/")
    assert status == 200 and 'data-run-id="20261122T080000Z-aaaaaa"' in html and "0.500" in html
    status, _, html = _get(server.url + "/runs/20261122T080000Z-aaaaaa")
    assert status == 200 and 'id="step-publish"' in html
    status, _, body = _get(server.url + "/api/runs/20261122T080000Z-aaaaaa")
    assert status == 200 and json.loads(body)["steps"][3]["result"] == EVAL_RESULT
    status, _, html = _get(server.url + "/runs/nope")
    assert status == 404 and "Traceback" not in html
    status, _, html = _get(server.url + "/versions")
    assert status == 200 and html.count("<button") == 1 and "● live" in html
    status, headers, text = _get(server.url + "/files/20261122T080000Z-aaaaaa/pipeline.log")
    assert status == 200 and text == "runner output\n" and headers["Content-Type"].startswith("text/plain")
    assert "sandbox" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/files/../store/CURRENT", "/files/%2e%2e/store/CURRENT",
                                  "/files/20261122T080000Z-aaaaaa/../../store/CURRENT", "/files//etc/passwd"])
def test_server_refuses_path_traversal(site, path):
    import http.client

    server, _, _ = site
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path)  # raw: urllib would normalise the dots away
    resp = conn.getresponse()
    assert resp.status == 404 and b"000002" not in resp.read()  # CURRENT names ...-000002
    conn.close()


def _form_token(server) -> str:
    """The token the versions page's rollback forms carry (what a browser submits)."""
    import re

    html = _get(server.url + "/versions")[2]
    tokens = set(re.findall(r'name="token" value="([^"]+)"', html))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def test_rollback_form_and_api(site):
    server, _, store = site
    old = "20261122T080100000000Z-000001"
    token = _form_token(server)
    assert token == server.app.token
    status, _, html = _post(server.url + "/versions/rollback", {"version": old, "token": token},
                            "application/x-www-form-urlencoded")
    assert status == 200 and "Rolled back" in html and f'id="live-version">{old}<' in html
    assert VersionStore(str(store)).current() == old
    status, _, body = _post(server.url + "/api/rollback", {"version": "20261122T090100000000Z-000002"},
                            headers={"X-Twotower-Token": token})
    assert status == 200 and json.loads(body) == {"live": "20261122T090100000000Z-000002"}


def test_refused_rollback_shows_the_reason(site):
    server, _, store = site
    old = "20261122T080100000000Z-000001"
    with open(store / "versions" / old / "items.txt", "a") as fh:
        fh.write("tampered\n")
    token = server.app.token
    status, _, html = _post(server.url + "/versions/rollback", {"version": old, "token": token},
                            "application/x-www-form-urlencoded")
    assert status == 200 and 'id="msg-error"' in html and "items.txt" in html and "Traceback" not in html
    assert VersionStore(str(store)).current() == "20261122T090100000000Z-000002"
    status, _, body = _post(server.url + "/api/rollback", {"version": "../x"}, headers={"X-Twotower-Token": token})
    assert status == 409 and "invalid version id" in json.loads(body)["error"]


def test_cross_site_post_is_refused(site):
    server, _, store = site
    status, _, body = _post(server.url + "/api/rollback", {"version": "20261122T080100000000Z-000001"},
                            headers={"Origin": "http://evil.example"})
    assert status == 403 and VersionStore(str(store)).current() == "20261122T090100000000Z-000002"


class _FakeRetriever:
    def __init__(self, version):
        self.version = version
        self.manifest = {"serving": {"display_fields": ["title"]}}

    def retrieve(self, request, k):
        from serving.retriever import RequestError

        if "user_id" in request:
            raise RequestError("this model's query key is 'query', not 'user_id'")
        items = [{"item_id": f"P{i}", "title": f"<item {i}>"} for i in range(k)]
        return {"items": items, "scores": [1.0 - i / 10 for i in range(k)], "version": self.version}


def test_query_uses_the_requested_version_and_caches_it(site):
    server, _, _ = site
    loads = []

    def loader(store, version):
        loads.append(version)
        return _FakeRetriever(version)

    server.app.retrievers = RetrieverCache(server.app.store, loader=loader)
    status, _, body = _post(server.url + "/api/query", {"query": "shoes", "k": 3})
    assert status == 200
    answer = json.loads(body)
    assert answer["version"] == "20261122T090100000000Z-000002" and len(answer["results"]) == 3
    assert answer["results"][0] == {"rank": 1, "item_id": "P0", "score": 1.0, "fields": {"title": "<item 0>"}}
    url = server.url + "/query?" + urllib.parse.urlencode({"q": "shoes", "k": 2, "version":
                                                           "20261122T080100000000Z-000001"})
    status, _, html = _get(url)
    assert status == 200 and html.count("<tr><td class=\"num\">") == 2 and "&lt;item 1&gt;" in html
    _post(server.url + "/api/query", {"query": "boots"})
    assert loads == ["20261122T090100000000Z-000002", "20261122T080100000000Z-000001"]  # each loaded once
    status, _, body = _post(server.url + "/api/query", {"user_id": "7"})
    assert status == 400 and "not 'user_id'" in json.loads(body)["error"]
    status, _, html = _get(server.url + "/query?" + urllib.parse.urlencode({"q": "x", "k": "0"}))
    assert status == 400 and 'id="msg-error"' in html and "k must be" in html


def test_query_on_a_missing_version_is_a_message(site):
    server, _, _ = site
    status, _, body = _post(server.url + "/api/query", {"query": "x", "version": "20000101T000000000000Z-000000"})
    assert status == 400 and "cannot be loaded" in json.loads(body)["error"]


def test_unread_chunked_body_closes_the_connection(site):
    """A chunked body the server never reads must not be parsed as the next request."""
    import socket

    server, _, _ = site
    host, port = server.url.split("//")[1].split(":")
    smuggled = b"GET /api/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"
    request = (b"POST /no/such/page HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: text/plain\r\n\r\n" + body)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break  # the server closed the connection after its one answer
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 1, received[:300]
    assert b"Connection: close" in received
