"""Both launchers on a fresh server: a deep link as the very first request goes through app.py's navigation,
and nothing the browser loads comes from outside the machine."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")]

LAUNCHERS = {"python app.py": [sys.executable, "app.py"],
             "streamlit run app.py": [sys.executable, "-m", "streamlit", "run", "app.py"]}
LOCAL_HOSTS = {"localhost", "127.0.0.1"}
# Streamlit's legacy pages/ list names every module in pages/, helpers included
LEGACY_ENTRIES = ("analysis widgets", "charts", "search widgets")
# What the document asks the browser to load: headless Chromium never fetches the favicon, so its <link> is
# read from the DOM (a ":material/…:" page icon points it at fonts.gstatic.com)
LOADED_URLS = """() => Array.from(document.querySelectorAll('link[href], script[src], img[src], iframe[src], source[src]'))
    .map(e => e.href || e.src)"""


@contextmanager
def serve(command: list[str], folder: Path, log_path: Path):
    """The app on a free port, started by `command` (fresh process: no visit before the test's)."""
    port = free_port()
    env = dict(os.environ, SAEDASH_WORKSPACES=str(folder), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    with log_path.open("w") as log:
        proc = subprocess.Popen([*command, "--server.port", str(port), "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            t0 = time.time()
            while not _healthy(url):
                if proc.poll() is not None or time.time() - t0 > 60:
                    raise RuntimeError(f"The app did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_deep_link_first_goes_through_the_apps_navigation_and_stays_local(launcher, e2e_workspaces, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    folder, _kind = e2e_workspaces
    requested: list[str] = []
    with serve(LAUNCHERS[launcher], folder, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.context.on("request", lambda r: requested.append(r.url))
            page.goto(f"{url}/features?feature=983")  # the server's first visit
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.locator("a", has_text="Dataset diff")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Pick an embedded corpus in the sidebar")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("No workspace is open")).to_have_count(0)
            nav_text = nav.inner_text().lower()
            assert not any(entry in nav_text for entry in LEGACY_ENTRIES), nav_text
            assert "feature=983" in page.url and "/features" in page.url
            requested.extend(page.evaluate(LOADED_URLS))
            page.goto(f"{url}/")
            expect(page.get_by_text("Workspace", exact=True).first).to_be_visible(timeout=60_000)
            page.wait_for_load_state("networkidle")
            requested.extend(page.evaluate(LOADED_URLS))
            assert any("/media/" in u for u in page.evaluate(LOADED_URLS))  # the local page icon is there
        finally:
            browser.close()
    hosts = {urlparse(u).hostname for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert requested and hosts <= LOCAL_HOSTS, sorted(u for u in requested if urlparse(u).hostname not in LOCAL_HOSTS)
