"""HTML for the UI's pages: plain server-rendered HTML, inline CSS, a few lines of vanilla JS.

Every value that comes from data (run folders, manifests, item tables, queries) passes
through :func:`esc` or :func:`url_path` on its way into the page; nothing is loaded from
outside the server (no CDN, no fonts), so the page works offline.
"""

from __future__ import annotations

import html
import json
from typing import Iterable, Optional
from urllib.parse import quote, urlencode

from core.contracts import files as names
from ui.query import MAX_UI_K

#: How often the runs and run pages reload themselves while a run is still going.
REFRESH_SECONDS = 10

CSS = """
:root { --fg:#1d2430; --muted:#5d6778; --line:#d9dee7; --bg:#f6f8fb; --ok:#137333; --bad:#b3261e;
        --run:#8a5a00; --accent:#1a56c4; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#1d2430; color:#fff; padding:10px 24px; display:flex; gap:24px; align-items:center; }
header .brand { font-weight:700; letter-spacing:.3px; }
header nav a { color:#c9d4e6; text-decoration:none; margin-right:18px; }
header nav a.active, header nav a:hover { color:#fff; text-decoration:underline; }
main { padding:18px 24px 48px; max-width:1400px; }
h1 { font-size:20px; margin:4px 0 14px; } h2 { font-size:16px; margin:26px 0 8px; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f6; font-weight:600; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tr.live td { background:#eef7ee; }
a { color:var(--accent); }
td.mono, td .mono, .nowrap { white-space:nowrap; }
td.val { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px;
         overflow-wrap:anywhere; max-width:900px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; }
.status { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
          border:1px solid currentColor; white-space:nowrap; }
.status-succeeded { color:var(--ok); } .status-failed { color:var(--bad); }
.status-running { color:var(--run); } .status-pending, .status-not-run { color:var(--muted); }
.live-marker { color:var(--ok); font-weight:700; }
.muted { color:var(--muted); }
.msg { padding:8px 12px; border-radius:6px; margin:0 0 14px; max-width:1100px; white-space:pre-wrap; }
.msg.ok { background:#e6f4ea; border:1px solid #a8dab5; }
.msg.error { background:#fce8e6; border:1px solid #f3b7b1; }
.facts { display:grid; grid-template-columns:max-content auto; gap:4px 16px; margin:0 0 12px; }
.facts dt { color:var(--muted); } .facts dd { margin:0; }
section.step { background:#fff; border:1px solid var(--line); border-radius:6px; padding:4px 14px 12px;
               margin:14px 0; }
section.step h2 { display:flex; gap:12px; align-items:center; }
iframe.report { width:100%; min-height:160px; border:1px solid var(--line); background:#fff; }
details { margin-top:8px; } summary { cursor:pointer; color:var(--muted); }
form.inline { display:inline; margin:0; }
button { font:inherit; padding:4px 12px; border-radius:5px; border:1px solid #9aa6b8; background:#fff;
         cursor:pointer; }
button:hover { background:#eef1f6; }
.query-form { display:flex; flex-wrap:wrap; gap:10px; align-items:end; background:#fff; padding:12px;
              border:1px solid var(--line); border-radius:6px; margin-bottom:16px; }
.query-form label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:3px; }
.query-form input, .query-form select { font:inherit; padding:5px 8px; border:1px solid #9aa6b8;
                                        border-radius:5px; }
.query-form input[name=q] { width:340px; }
.query-form input[name=k] { width:80px; }
"""

# Sizes each report iframe to its content, so a page of seven reports scrolls as one page.
# Reports are same-origin (served from the step folder), which makes contentDocument readable.
JS = """
function fitFrame(frame) {
  try {
    var doc = frame.contentDocument;
    if (doc && doc.documentElement) {
      frame.style.height = (doc.documentElement.scrollHeight + 24) + 'px';
    }
  } catch (e) { /* not readable: keep the CSS height */ }
}
document.addEventListener('DOMContentLoaded', function () {
  var mode = document.getElementById('mode');
  var q = document.getElementById('q');
  if (mode && q) {
    var hint = function () { q.placeholder = mode.value === 'user_id' ? 'a user id, e.g. 42'
                                                                       : 'e.g. nike running shoes'; };
    mode.addEventListener('change', hint); hint();
  }
});
"""


def esc(value) -> str:
    """Any value as HTML-escaped text (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def url_path(rel: str) -> str:
    """A relative file path as a URL path under /files/ (each segment percent-encoded)."""
    return "/files/" + "/".join(quote(part, safe="") for part in rel.split("/"))


def run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def fmt_metric(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3f}"


def fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


def fmt_time(text: Optional[str]) -> str:
    """``2026-11-21T22:30:22Z`` -> ``2026-11-21 22:30:22 UTC`` (other strings unchanged)."""
    if not text:
        return "—"
    text = str(text)
    if len(text) >= 19 and text[10] == "T":
        return text[:10] + " " + text[11:19] + " UTC"
    return text


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def status_badge(status: str) -> str:
    css = "status-" + status.replace(" ", "-")
    return f'<span class="status {esc(css)}" data-status="{esc(status)}">{esc(status)}</span>'


def message(text: Optional[str], kind: str, page_level: bool = True) -> str:
    """An ok / error banner; empty when there is nothing to say.

    The page-level banner carries ``id="msg-<kind>"`` (one per page); others only the class.
    """
    if not text:
        return ""
    role = "alert" if kind == "error" else "status"
    ident = f' id="msg-{esc(kind)}"' if page_level else ""
    return f'<div class="msg {esc(kind)}" role="{role}"{ident}>{esc(text)}</div>'


def layout(title: str, body: str, active: str, refresh_seconds: Optional[int] = None) -> str:
    """The whole document around ``body`` (already HTML).

    ``refresh_seconds``: reload the page this often (while a run is still going).
    """
    links = (("runs", "/", "Runs"), ("versions", "/versions", "Versions"), ("query", "/query", "Query"))
    nav = "".join(f'<a href="{href}" class="{"active" if key == active else ""}" id="nav-{key}">{label}</a>'
                  for key, href, label in links)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            + (f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else "")
            + f"<title>{esc(title)} · twotower</title><style>{CSS}</style><script>{JS}</script></head>"
            f'<body><header><span class="brand">twotower</span><nav>{nav}</nav></header>'
            f"<main>{body}</main></body></html>")


def error_page(status: int, text: str) -> str:
    return layout(f"Error {status}", f"<h1>Error {status}</h1>{message(text, 'error')}"
                                     f'<p><a href="/">Back to the runs</a></p>', "")


# -- runs ---------------------------------------------------------------------------------------
def _published_cell(run: dict) -> str:
    if run["published"] is None:
        return '<span class="muted">—</span>'
    if not run["published"]:
        return "no"
    version = run.get("version")
    return "yes" + (f' <span class="mono">{esc(version)}</span>' if version else "")


def runs_page(runs: list[dict], runs_dir: str) -> str:
    """Every run, newest first: status, dates, key metrics, publish decision."""
    if not runs:
        body = f"<h1>Runs</h1><p class='muted'>No runs in <code>{esc(runs_dir)}</code> yet. " \
               f"Start one with <code>twotower run</code>.</p>"
        return layout("Runs", body, "runs")
    rows = []
    for run in runs:
        m = run["metrics"]
        rows.append(
            f'<tr data-run-id="{esc(run["run_id"])}" data-status="{esc(run["status"])}">'
            f'<td><a class="mono" href="{esc(run_url(run["run_id"]))}">{esc(run["run_id"])}</a></td>'
            f"<td>{status_badge(run['status'])}</td>"
            f"<td class='nowrap'>{esc(fmt_time(run['started_at']))}</td>"
            f"<td class='nowrap'>{esc(run['data_date'] or '—')}</td>"
            f'<td class="num" data-metric="recall_at_10">{fmt_metric(m["recall_at_10"])}</td>'
            f'<td class="num" data-metric="popularity_recall_at_10">{fmt_metric(m["popularity_recall_at_10"])}</td>'
            f'<td class="num" data-metric="index_recall_at_10_vs_exact">'
            f'{fmt_metric(m["index_recall_at_10_vs_exact"])}</td>'
            f"<td>{_published_cell(run)}</td></tr>")
    body = (f"<h1>Runs <span class='muted'>({len(runs)} in <code>{esc(runs_dir)}</code>)</span></h1>"
            '<table id="runs-table"><thead><tr><th>Run</th><th>Status</th><th>Started</th><th>Data date</th>'
            "<th>recall@10</th><th>popularity recall@10</th><th>index recall vs exact</th><th>Published</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    running = any(run["status"] == "running" for run in runs)
    return layout("Runs", body, "runs", refresh_seconds=REFRESH_SECONDS if running else None)


def _flatten(value, prefix: str = "") -> Iterable[tuple[str, object]]:
    """Nested dicts as (dotted key, leaf) pairs; lists stay leaves."""
    if isinstance(value, dict) and value:
        for key in value:
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _leaf_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 300 else text[:297] + "..."
    return "—" if value is None else str(value)


def result_table(result: Optional[dict]) -> str:
    """stage.json's result as a two-column table (the fallback when a step has no report.html)."""
    if not result:
        return '<p class="muted">No result recorded.</p>'
    rows = "".join(f'<tr><th class="mono">{esc(k)}</th><td class="val">{esc(_leaf_text(v))}</td></tr>'
                   for k, v in _flatten(result))
    return f'<table class="result">{rows}</table>'


def _files_list(step: dict) -> str:
    if not step["files"]:
        return ""
    items = "".join(f'<li><a class="mono" href="{esc(url_path(f["path"]))}">{esc(f["path"].split("/", 1)[-1])}'
                    f'</a> <span class="muted">{fmt_bytes(f["size"])}</span></li>' for f in step["files"])
    more = '<li class="muted">… more files not listed</li>' if step["files_truncated"] else ""
    return f"<details><summary>{len(step['files'])} file(s)</summary><ul>{items}{more}</ul></details>"


def _step_section(step: dict) -> str:
    anchor = f"step-{step['key']}"
    parts = [f'<section class="step" id="{esc(anchor)}" data-step="{esc(step["key"])}" '
             f'data-status="{esc(step["status"])}"><h2>{esc(step["name"])} {status_badge(step["status"])}'
             f'<span class="muted">{esc(fmt_seconds(step["seconds"]))}</span></h2>']
    if step["error"]:
        parts.append(message(step["error"], "error", page_level=False))
    if step["report_html"]:
        parts.append(f'<iframe class="report" id="report-{esc(step["key"])}" title="{esc(step["name"])} report" '
                     f'src="{esc(url_path(step["report_html"]))}" sandbox="allow-same-origin" '
                     f'onload="fitFrame(this)"></iframe>')
        if step["report_md"]:
            parts.append(f'<p><a href="{esc(url_path(step["report_md"]))}">{names.REPORT_MARKDOWN_FILE}</a></p>')
    elif step["result"] is not None:
        parts.append(result_table(step["result"]))
    else:
        waiting = step["status"] in ("running", "pending")
        parts.append(f'<p class="muted">{"No output yet." if waiting else "No output."}</p>')
    parts.append(_files_list(step))
    parts.append("</section>")
    return "".join(parts)


def run_page(run: dict) -> str:
    """One run: headline facts, step overview, then each step's report / result and files."""
    m = run["metrics"]
    links = []
    for rel, label in ((run["log"], names.PIPELINE_LOG),
                       (f"{run['run_id']}/{names.SUMMARY_FILE}" if run["has_summary"] else None, names.SUMMARY_FILE),
                       (f"{run['run_id']}/{names.RUN_FILE}" if run["has_run_json"] else None, names.RUN_FILE)):
        if rel:
            links.append(f'<a id="link-{esc(label.replace(".", "-"))}" href="{esc(url_path(rel))}">{esc(label)}</a>')
    facts = [("Status", status_badge(run["status"])),
             ("Started", esc(fmt_time(run["started_at"]))),
             ("Finished", esc(fmt_time(run["finished_at"]))),
             ("Data date", esc(run["data_date"] or "—")),
             ("Data fingerprint", f'<span class="mono">{esc((run["data_fingerprint"] or "—")[:16])}</span>'),
             ("recall@10", fmt_metric(m["recall_at_10"])),
             ("popularity recall@10", fmt_metric(m["popularity_recall_at_10"])),
             ("ndcg@10", fmt_metric(m["ndcg_at_10"])),
             ("index recall vs exact", fmt_metric(m["index_recall_at_10_vs_exact"])),
             ("Published", _published_cell(run)),
             ("Step time", esc(fmt_seconds(run["total_seconds"]))),
             ("Files", " · ".join(links) or '<span class="muted">none</span>')]
    body = [f'<h1>Run <span class="mono" id="run-id">{esc(run["run_id"])}</span></h1>']
    if run["status"] == "failed":
        where = f" in step {run['failed_step']}" if run["failed_step"] else ""
        body.append(message(f"Failed{where}: {run['error'] or 'no error recorded'}", "error"))
    for problem in run["problems"]:
        body.append(message(problem, "error", page_level=False))
    body.append('<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>")
    if run["reasons"]:
        body.append("<h2>Gate</h2><ul>" + "".join(f"<li>{esc(r)}</li>" for r in run["reasons"]) + "</ul>")
    rows = "".join(f'<tr><td><a href="#step-{esc(s["key"])}">{esc(s["name"])}</a></td>'
                   f"<td>{status_badge(s['status'])}</td><td class='num'>{esc(fmt_seconds(s['seconds']))}</td></tr>"
                   for s in run["steps"])
    body.append(f'<h2>Steps</h2><table id="steps-table"><thead><tr><th>Step</th><th>Status</th><th>Duration</th>'
                f"</tr></thead><tbody>{rows}</tbody></table>")
    body.extend(_step_section(s) for s in run["steps"])
    return layout(f"Run {run['run_id']}", "".join(body), "runs",
                  refresh_seconds=REFRESH_SECONDS if run["status"] == "running" else None)


# -- versions -----------------------------------------------------------------------------------
def versions_page(listing: dict, known_runs: set[str], ok: Optional[str] = None,
                  error: Optional[str] = None, token: str = "") -> str:
    """Every version (newest first), the live one marked, a Rollback button on the others.

    ``token``: the UI's state-change token, carried by each rollback form (ui/server.py).
    """
    body = [f"<h1>Versions <span class='muted'>in <code>{esc(listing['store'])}</code></span></h1>",
            message(ok, "ok"), message(error, "error"),
            message(listing.get("pointer_problem") and
                    f"{listing['pointer_problem']} Roll back to a version below to repair it.", "error",
                    page_level=False),
            f'<p>Live version: <span class="mono" id="live-version">{esc(listing["live"] or "none")}</span></p>']
    if not listing["versions"]:
        body.append("<p class='muted'>No versions published yet.</p>")
        return layout("Versions", "".join(body), "versions")
    rows = []
    for v in listing["versions"]:
        m = v["metrics"]
        run_cell = "—"
        if v["run_id"]:
            run_cell = (f'<a class="mono" href="{esc(run_url(v["run_id"]))}">{esc(v["run_id"])}</a>'
                        if v["run_id"] in known_runs else f'<span class="mono">{esc(v["run_id"])}</span>')
        if v["live"]:
            action = '<span class="live-marker">● live</span>'
        elif v["complete"] and not v["problem"]:
            action = ('<form class="inline rollback" method="post" action="/versions/rollback">'
                      f'<input type="hidden" name="version" value="{esc(v["id"])}">'
                      f'<input type="hidden" name="token" value="{esc(token)}">'
                      f'<button type="submit" data-version="{esc(v["id"])}">Rollback</button></form>')
        else:
            action = f'<span class="muted">{esc(v["problem"] or "")}</span>'
        rows.append(
            f'<tr class="{"live" if v["live"] else ""}" data-version="{esc(v["id"])}" '
            f'data-live="{"true" if v["live"] else "false"}">'
            f'<td class="mono">{esc(v["id"])}</td><td class="nowrap">{esc(fmt_time(v["created"]))}</td>'
            f"<td>{run_cell}</td>"
            f'<td class="num">{fmt_metric(m["recall_at_10"])}</td>'
            f'<td class="num">{fmt_metric(m["popularity_recall_at_10"])}</td>'
            f'<td class="num">{fmt_metric(m["ndcg_at_10"])}</td>'
            f'<td class="num">{fmt_metric(m["index_recall_at_10_vs_exact"])}</td>'
            f'<td class="num">{esc(v["n_items"] if v["n_items"] is not None else "—")}</td>'
            f'<td class="nowrap">{action} <a href="{esc(page_query_url(v["id"]))}">query</a></td></tr>')
    body.append('<table id="versions-table"><thead><tr><th>Version</th><th>Created</th><th>Run</th>'
                "<th>recall@10</th><th>popularity recall@10</th><th>ndcg@10</th><th>index recall vs exact</th>"
                f"<th>Items</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return layout("Versions", "".join(body), "versions")


# -- query --------------------------------------------------------------------------------------
def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return _leaf_text(value)


def query_page(listing: dict, form: dict, answer: Optional[dict] = None, error: Optional[str] = None) -> str:
    """The query box (text or user id, k, version) and, after a query, its results table.

    ``form``: {"q", "mode" ("text" | "user_id"), "k", "version" ("" = live)} as submitted.
    """
    live = listing["live"]
    options = [f'<option value=""{"" if form.get("version") else " selected"}>live ({esc(live or "none")})</option>']
    for v in listing["versions"]:
        if v["complete"]:
            selected = " selected" if form.get("version") == v["id"] else ""
            label = v["id"] + ("  (live)" if v["live"] else "")
            options.append(f'<option value="{esc(v["id"])}"{selected}>{esc(label)}</option>')
    mode = form.get("mode") or "text"
    modes = "".join(f'<option value="{value}"{" selected" if mode == value else ""}>{label}</option>'
                    for value, label in (("text", "text query"), ("user_id", "user id")))
    body = ["<h1>Query</h1>",
            '<form class="query-form" id="query-form" method="get" action="/query">'
            f'<label>Ask by<select name="mode" id="mode">{modes}</select></label>'
            f'<label>Query<input type="text" name="q" id="q" value="{esc(form.get("q", ""))}" autofocus></label>'
            f'<label>k<input type="number" name="k" id="k" min="1" max="{MAX_UI_K}" '
            f'value="{esc(form.get("k") or 10)}"></label>'
            f'<label>Version<select name="version" id="version">{"".join(options)}</select></label>'
            '<button type="submit" id="query-submit">Search</button></form>',
            message(error, "error")]
    if answer is not None:
        cols = answer["display_fields"]
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        rows = "".join(
            f'<tr><td class="num">{r["rank"]}</td><td class="mono">{esc(r["item_id"])}</td>'
            f'<td class="num">{r["score"]:.4f}</td>'
            + "".join(f"<td>{esc(_cell(r['fields'].get(c)))}</td>" for c in cols) + "</tr>"
            for r in answer["results"])
        asked = answer.get("query") if "query" in answer else f"user {answer.get('user_id')}"
        body.append(f'<p>{len(answer["results"])} result(s) for <b>{esc(asked)}</b> from version '
                    f'<span class="mono" id="answer-version">{esc(answer["version"])}</span></p>'
                    f'<table id="results"><thead><tr><th>#</th><th>Item</th><th>Score</th>{head}</tr></thead>'
                    f"<tbody>{rows}</tbody></table>")
    return layout("Query", "".join(body), "query")


def page_query_url(version: str) -> str:
    """The query page with ``version`` preselected."""
    return "/query?" + urlencode({"version": version})

