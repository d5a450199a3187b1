"""Dashboard entry point (navigation over pages/, sidebar workspace picker).

Launch with `python app.py [streamlit options]` (what `make run` does) or `streamlit run app.py`: both route
every URL, deep links on a fresh server included, through the navigation below (pages/routing.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import backend  # noqa: F401  (sets offline environment defaults before anything else loads)
import streamlit as st
from streamlit import runtime

if __name__ == "__main__" and not runtime.exists():
    # Launcher: Streamlit treats a folder named pages/ as old-style multipage pages until the first
    # st.navigation call, so a fresh server's first visit to a deep link (/features?feature=3) would run
    # that page alone. Turning the legacy mode off before the server starts routes every URL through here.
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as stcli

    PagesManager.uses_pages_directory = False
    sys.argv = ["streamlit", "run", __file__, *sys.argv[1:]]
    sys.exit(stcli.main())

from pages import widgets

# A local image: a ":material/…:" page icon makes every browser fetch it from fonts.gstatic.com.
APP_ICON = Path(__file__).resolve().parent / "assets" / "app_icon.png"
st.set_page_config(page_title="SAE embeddings dashboard", page_icon=str(APP_ICON), layout="wide")

# Material icons, never emoji: emoji render as empty boxes in headless Chromium and without an emoji font.
SECTIONS = {
    "Workspace": [("home", "Home", ":material/home:"), ("corpora", "Corpora", ":material/library_books:")],
    "Explore": [("features", "Features", ":material/extension:"), ("retrieval", "Retrieval", ":material/search:")],
    "Analyse": [("diff", "Dataset diff", ":material/compare_arrows:"), ("clustering", "Clustering", ":material/scatter_plot:"),
                ("correlations", "Correlations", ":material/link:"), ("explain", "Explain & trends", ":material/insights:")],
    "Model": [("steering", "Steering", ":material/tune:"), ("sae_compare", "Compare SAEs", ":material/compare_arrows:")],
}

pages = {
    section: [
        st.Page(f"pages/{slug}.py", title=title, icon=icon, url_path=slug, default=(slug == "home"))
        for slug, title, icon in items
        if (widgets.PAGES_DIR / f"{slug}.py").exists()
    ]
    for section, items in SECTIONS.items()
}
nav = st.navigation({k: v for k, v in pages.items() if v})
with widgets.user_errors():  # the one place a problem the user can fix becomes a message, never a traceback
    widgets.sidebar()
    nav.run()
