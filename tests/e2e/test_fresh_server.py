"""Both launchers on a fresh server: a deep link as the very first request goes through app.py's navigation,
and nothing the browser loads comes from outside the machine."""
from __future__ import annotations

import sys
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.server import serve

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
