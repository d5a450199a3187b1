"""The real app in headless Chromium: upload a CSV, embed it, open a feature, see highlighted, escaped documents."""
from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e

XSS = "<script>alert(1)</script> <img src=x onerror=alert(1)> the movie"
CSV = ("text,label\n"
       "the movie was great and funny,fresh\n"
       "a terrible boring film,rotten\n"
       "the plot of the story is about a family,plot\n"
       f"\"{XSS}\",xss\n").encode()

EVIL_NAME = "[click me](https://evil.example/phish) ![t](https://evil.example/pixel.png)"

HIGHLIGHTED = """() => Array.from(document.querySelectorAll('.saedash-doc span')).some(s => {
    const m = getComputedStyle(s).backgroundColor.match(/rgba?\\(([^)]*)\\)/);
    if (!m) return false;
    const p = m[1].split(',').map(Number);
    return p.length === 3 || p[3] > 0;
})"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_upload_embed_and_browse_features(app_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, kind = app_server
    t0 = time.time()
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            # The first visit to a fresh server is a deep link: it must still go through app.py's navigation
            # and sidebar (not Streamlit's legacy pages/ mode, which would run the page file alone).
            page.goto(f"{url}/corpora")
            expect(page.get_by_text("Add a corpus")).to_be_visible(timeout=60_000)
            expect(page.locator('[data-testid="stSidebarNav"] a', has_text="Features")).to_be_visible()
            expect(page.get_by_text("Workspace", exact=True).first).to_be_visible()

            page.locator('input[type="file"]').set_input_files(files=[{"name": "e2e.csv", "mimeType": "text/csv", "buffer": CSV}])
            expect(page.get_by_text("4 rows, columns: text, label")).to_be_visible(timeout=30_000)
            name_box = page.get_by_label("Corpus name")
            name_box.fill(EVIL_NAME)  # a name that is markdown for a link and an image (issue 12, problem 7)
            name_box.press("Enter")
            time.sleep(1)  # let the entered name reach the server before the click
            page.get_by_role("button", name="Add and embed").click()
            expect(page.get_by_text("embedding runs in the background")).to_be_visible(timeout=30_000)
            # the progress list refreshes every second until the corpus is embedded and finalized
            expect(page.locator("code", has_text=re.compile(r"^ready$"))).to_be_visible(timeout=420_000)
            t_embedded = time.time() - t0
            # the name shows as text: no link to, and no image fetched from, evil.example
            line = page.locator('[data-testid="stMarkdownContainer"]', has_text="click me").first.inner_text()
            assert EVIL_NAME in line.replace("\u2060", ""), line
            assert page.locator('a[href*="evil.example"], img[src*="evil.example"]').count() == 0
            content = page.content()
            assert '<a href="https://evil.example' not in content and '<img src="https://evil.example' not in content

            page.locator('[data-testid="stSidebarNav"] a', has_text="Features").click()
            table = page.locator('[data-testid="stDataFrame"]').first
            expect(table).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Select a feature in the table")).to_be_visible()
            box = table.bounding_box()
            page.mouse.click(box["x"] + 14, box["y"] + 35 + 17)  # the first row's selection cell (densest feature)
            expect(page.locator("h3", has_text="Feature #")).to_be_visible(timeout=120_000)
            docs = page.locator(".saedash-doc")
            expect(docs.first).to_be_visible(timeout=120_000)
            assert page.evaluate(HIGHLIGHTED), "no highlighted token (non-zero rgba background)"
            assert page.locator(".saedash-doc span[style*='outline']").count() == docs.count()  # strongest token marked

            # open the strongest feature on the markup document through search by example: it fires on that document
            page.get_by_role("tab", name="Search by example").click()
            page.get_by_label("Paste a text").fill(XSS)
            page.get_by_role("button", name="Find features").click()
            expect(page.get_by_role("button", name="Open this feature")).to_be_visible(timeout=120_000)
            page.get_by_role("button", name="Open this feature").click()
            page.wait_for_function("() => Array.from(document.querySelectorAll('.saedash-doc'))"
                                   ".filter(d => d.innerText.includes('alert(')).length >= 2", timeout=120_000)
            shown = [t for t in docs.all_inner_texts() if "alert(" in t]  # the example and the stored document
            for text in shown:
                if kind == "real":
                    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(1)>" in text, text
                else:  # the tiny word-level tokenizer shows unknown words as [UNK] and tokens without spaces
                    assert "<script>alert(" in text and "<imgsrc=" in text and "onerror=alert(" in text, text
            assert page.locator(".saedash-doc script, .saedash-doc img, .saedash-doc [onerror]").count() == 0
            assert page.locator("script", has_text="alert(").count() == 0 and page.locator("img[src='x']").count() == 0

            page.set_viewport_size({"width": 1400, "height": 2000})
            page.get_by_text("Top-activating documents").scroll_into_view_if_needed()
            time.sleep(1)  # let the charts settle
            shot = tmp_path / "features.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot} ({kind} workspace; embedded after {t_embedded:.0f} s, total {time.time() - t0:.0f} s)")
        finally:
            browser.close()
    assert dialogs == []
