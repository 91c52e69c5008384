"""``twotower ui`` end to end in headless Chromium (Debian's chromium + chromedriver, via selenium).

Two real pipeline runs on a tiny synthetic shop (module fixture) give a run folder and a
store with two versions; the UI runs as its own process on a free port. The browser then
walks the runs page, a run page (with a step report in an iframe), the versions page
(rolling back and seeing the live marker and CURRENT move), and the query box, saving a
PNG screenshot of each page into pytest's tmp dir.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver explicitly, so it never
downloads a browser or driver (Selenium Manager is skipped when the driver path is given).
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from core.config import load_config
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                "install them with `make browser` (apt-get install chromium chromium-driver)",
                allow_module_level=True)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000",
                  # evil.example resolves to this machine, as a DNS-rebinding attacker would arrange
                  "--host-resolver-rules=MAP evil.example 127.0.0.1"]
UI_TOKEN = "e2e-token-" + os.urandom(8).hex()  # what rollbacks from scripts must present
WAIT_S = 120  # the first query loads TensorFlow and the version: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Two real runs into one store: (root, first summary, second summary)."""
    from datagen.synth_shop import generate_shop
    from pipelines.local_run import run_local

    root = tmp_path_factory.mktemp("ui-e2e")
    data = root / "shop"
    generate_shop(str(data), products=400, queries=600)
    overrides = [f"data.path={data}", f"publish.store={root / 'store'}", f"pipeline.runs_dir={root / 'runs'}",
                 "train.n_epochs=3"]
    first = run_local(load_config("shop", overrides))
    # Same data and seed: the second model matches the live one, and any regression is allowed,
    # so the second run publishes a second version.
    second = run_local(load_config("shop",
                                   overrides + ["gate.max_relative_regression=1.0"]))
    assert first["published"] and second["published"], (first["reasons"], second["reasons"])
    return root, first, second


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ui_command() -> list[str]:
    """``twotower ui`` through the real CLI entry point."""
    return [sys.executable, "-m", "pipelines.cli", "ui"]


@pytest.fixture(scope="module")
def ui_url(pipeline_runs, tmp_path_factory):
    root, _, _ = pipeline_runs
    port = _free_port()
    log_path = tmp_path_factory.mktemp("ui-log") / "ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_ui_command() + ["--runs", str(root / "runs"), "--store", str(root / "store"),
                                                 "--port", str(port), "--token", UI_TOKEN],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"twotower ui did not start (exit {proc.poll()}): {log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()  # SIGTERM is a clean stop
    assert "Traceback" not in log_path.read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def _screenshot(driver, folder, name: str) -> str:
    """A whole-page PNG: the window grows to the page's height for the shot, then shrinks back."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(600, min(int(height) + 40, 6000)))
    path = os.path.join(folder, f"ui-{name}.png")
    assert driver.save_screenshot(path), path
    driver.set_window_size(1400, 1000)
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])  # the IHDR chunk
    assert width >= 800 and height >= 500, (path, width, height)
    assert os.path.getsize(path) > 10_000, f"{path} is suspiciously small ({os.path.getsize(path)} bytes)"
    return path


def _wait(driver, condition, timeout=WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _live_row(driver):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#versions-table tbody tr[data-live=true]")
    assert len(rows) == 1, [r.get_attribute("data-version") for r in rows]
    return rows[0]


def test_runs_and_run_pages(pipeline_runs, ui_url, browser, shots):
    from selenium.webdriver.common.by import By

    root, first, second = pipeline_runs
    browser.get(ui_url + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert [r.get_attribute("data-run-id") for r in rows] == [second["run_id"], first["run_id"]]  # newest first
    for row, summary in zip(rows, (second, first)):
        assert row.get_attribute("data-status") == "succeeded"
        recall = row.find_element(By.CSS_SELECTOR, "td[data-metric=recall_at_10]").text
        assert recall == f"{summary['metrics']['recall_at_10']:.3f}"
        assert summary["version"] in row.text  # published yes + version
    _screenshot(browser, shots, "runs")

    rows[0].find_element(By.CSS_SELECTOR, "a").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "run-id"))
    assert browser.find_element(By.ID, "run-id").text == second["run_id"]
    steps = browser.find_elements(By.CSS_SELECTOR, "section.step")
    assert [s.get_attribute("data-step") for s in steps] == ["ingest", "transform", "train", "evaluate", "embed",
                                                             "index", "publish"]
    assert {s.get_attribute("data-status") for s in steps} == {"succeeded"}
    train = browser.find_element(By.ID, "step-train")
    frames = train.find_elements(By.CSS_SELECTOR, "iframe.report")
    if frames:  # a rendered report: it must have loaded (from the step folder) with real content
        _wait(browser, lambda d: d.execute_script(
            "var f = arguments[0]; return f.contentDocument && f.contentDocument.readyState === 'complete' "
            "&& f.contentDocument.body && f.contentDocument.body.innerText.trim().length > 20", frames[0]))
        browser.switch_to.frame(frames[0])
        assert "train" in browser.find_element(By.TAG_NAME, "body").text.lower()
        browser.switch_to.default_content()
    else:  # no report.html: the stage.json result table stands in
        assert "best_epoch" in train.find_element(By.CSS_SELECTOR, "table.result").text
    log_href = browser.find_element(By.ID, "link-pipeline-log").get_attribute("href")
    with urllib.request.urlopen(log_href, timeout=10) as resp:
        assert resp.status == 200 and resp.read(1)
    _screenshot(browser, shots, "run")


def test_versions_page_rolls_back(pipeline_runs, ui_url, browser, shots):
    from selenium.webdriver.common.by import By

    from core.store import VersionStore

    root, first, second = pipeline_runs
    store = VersionStore(str(root / "store"))
    assert store.current() == second["version"]
    browser.get(ui_url + "/")
    browser.find_element(By.ID, "nav-versions").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "versions-table"))
    ids = [r.get_attribute("data-version") for r in browser.find_elements(By.CSS_SELECTOR, "#versions-table tbody tr")]
    assert ids == [second["version"], first["version"]]
    live = _live_row(browser)
    assert live.get_attribute("data-version") == second["version"] and "live" in live.text
    assert not live.find_elements(By.TAG_NAME, "button")  # no rollback to what is already live
    _screenshot(browser, shots, "versions")

    browser.find_element(By.CSS_SELECTOR, f"button[data-version='{first['version']}']").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "msg-ok"))
    assert first["version"] in browser.find_element(By.ID, "msg-ok").text
    assert _live_row(browser).get_attribute("data-version") == first["version"]
    assert browser.find_element(By.ID, "live-version").text == first["version"]
    assert store.current() == first["version"]  # CURRENT moved on disk
    _screenshot(browser, shots, "versions-after-rollback")


def test_refused_rollback_is_a_message_not_a_traceback(pipeline_runs, ui_url):
    body = urllib.parse.urlencode({"version": "20000101T000000000000Z-000000"}).encode()
    req = urllib.request.Request(ui_url + "/versions/rollback", data=body + b"&token=" + UI_TOKEN.encode(),
                                 method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # follows the 303 back to /versions
        page = resp.read().decode()
    assert 'id="msg-error"' in page and "does not exist" in page
    assert "Traceback" not in page
    req = urllib.request.Request(ui_url + "/api/rollback", data=json.dumps({"version": "../../etc"}).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "X-Twotower-Token": UI_TOKEN})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 409 and "invalid version id" in json.loads(err.value.read())["error"]


def test_query_box_answers_from_the_live_version(pipeline_runs, ui_url, browser, shots):
    from selenium.webdriver.common.by import By

    from core.store import VersionStore

    root, _, _ = pipeline_runs
    live = VersionStore(str(root / "store")).current()
    browser.get(ui_url + "/")
    browser.find_element(By.ID, "nav-query").click()
    box = _wait(browser, lambda d: d.find_element(By.ID, "q"))
    box.clear()
    box.send_keys("nike running shoes")
    browser.find_element(By.ID, "query-submit").click()
    _wait(browser, lambda d: (d.find_elements(By.CSS_SELECTOR, "#results tbody tr")
                              or d.find_elements(By.ID, "msg-error")))
    assert not browser.find_elements(By.ID, "msg-error"), browser.find_element(By.ID, "msg-error").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == 10
    assert browser.find_element(By.ID, "answer-version").text == live
    assert any("running shoes" in r.text.lower() for r in rows), [r.text for r in rows]
    _screenshot(browser, shots, "query")


def test_screenshots_are_real_pngs(shots):
    """Runs last (file order): every page above left its screenshot."""
    names = sorted(os.listdir(shots))
    assert names == ["ui-query.png", "ui-run.png", "ui-runs.png", "ui-versions-after-rollback.png",
                     "ui-versions.png"], names
    for name in names:
        with open(os.path.join(shots, name), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def attacker_site():
    """An HTTP server for pages of another site (reached as http://evil.example:<port>)."""
    import http.server
    import threading

    pages: dict[str, str] = {}

    class _Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "not found").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://evil.example:{server.server_address[1]}", pages
    server.shutdown()
    server.server_close()


def test_cross_site_pages_cannot_roll_back_or_read(pipeline_runs, ui_url, browser, attacker_site):
    """What the hostile probe did, in a real browser: a form auto-submitted from another site, the
    same form from a sandboxed iframe (Origin: null), and a page under a rebound name."""
    from selenium.webdriver.common.by import By

    from core.store import VersionStore

    root, first, second = pipeline_runs
    store = VersionStore(str(root / "store"))
    live = store.current()
    target = first["version"] if live == second["version"] else second["version"]
    site, pages = attacker_site
    form = (f'<form id="f" method="post" action="{ui_url}/versions/rollback">'
            f'<input name="version" value="{target}"></form><script>document.getElementById("f").submit()</script>')
    pages["/csrf"] = f"<html><body>{form}</body></html>"
    pages["/sandboxed"] = ('<html><body><iframe id="frame" sandbox="allow-forms allow-scripts" srcdoc="'
                           + form.replace('"', "&quot;") + '"></iframe></body></html>')

    browser.get(site + "/csrf")
    _wait(browser, lambda d: "refused" in d.find_element(By.TAG_NAME, "body").text)
    assert "cross-site POST" in browser.find_element(By.TAG_NAME, "body").text

    browser.get(site + "/sandboxed")
    _wait(browser, lambda d: d.find_elements(By.ID, "frame"))
    browser.switch_to.frame(browser.find_element(By.ID, "frame"))
    _wait(browser, lambda d: "Origin: null" in d.find_element(By.TAG_NAME, "body").text)
    browser.switch_to.default_content()

    port = ui_url.rsplit(":", 1)[1]
    browser.get(f"http://evil.example:{port}/versions")  # the UI's own port, under the attacker's name
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "is not a name this server answers to" in text and target not in text
    assert store.current() == live  # CURRENT never moved
