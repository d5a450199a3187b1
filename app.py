"""Dashboard entry point: `streamlit run app.py` (navigation over pages/, sidebar workspace picker)."""
from __future__ import annotations

import backend  # noqa: F401  (sets offline environment defaults before anything else loads)
import streamlit as st

from pages import widgets

st.set_page_config(page_title="SAE embeddings dashboard", page_icon="🔬", layout="wide")

SECTIONS = {
    "Workspace": [("home", "Home", "🏠"), ("corpora", "Corpora", "📚")],
    "Explore": [("features", "Features", "🧩"), ("retrieval", "Retrieval", "🔎")],
    "Analyse": [("diff", "Dataset diff", "⚖️"), ("clustering", "Clustering", "🗺️"), ("correlations", "Correlations", "🔗")],
    "Model": [("steering", "Steering", "🎛️")],
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
widgets.sidebar()
nav.run()
