"""Every URL goes through app.py's `st.navigation`, however the server was started.

Streamlit treats a folder named pages/ next to the main script as old-style multipage pages until the first
`st.navigation` call. On a fresh `streamlit run app.py` server whose first request is a deep link
(/features?feature=3), Streamlit would run pages/features.py alone: its legacy page list (charts, widgets, …)
and no workspace picker. Each page imports this package first, so that run lands here: legacy mode is turned
off for the process and the run starts again, now through app.py, on the same URL (the page hashes agree:
both name the page by its url path). `python app.py` turns it off before the server starts."""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx


def route_through_app() -> bool:
    """Leave Streamlit's legacy pages/ mode; rerun the current script run through app.py if one is running.
    Returns whether legacy mode was on."""
    if not PagesManager.uses_pages_directory:
        return False
    PagesManager.uses_pages_directory = False
    if get_script_run_ctx() is not None:
        st.rerun()
    return True
