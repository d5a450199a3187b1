"""Compare SAEs: for a feature of workspace A's SAE, its nearest features in workspace B's SAE, by decoder
cosine and by co-firing on one corpus embedded in both.

Layout and widgets only: the comparison is `backend.sae_compare.compare_across_workspaces`, what a notebook
calls too."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.errors import UserError
from backend.sae_compare import FeatureComparison, check_comparable, compare_across_workspaces, shared_corpora
from backend.saes import workspace_sae_name
from backend.workspace import Workspace
from pages import widgets
from pages.widgets import md_escape

NO_CORPUS = "__none__"
EXAMPLE_CHARS = 160
MAX_MATCHES = 50


def sae_line(ws: Workspace) -> str:
    settings = ws.settings
    name = workspace_sae_name(ws)
    return (f"Model {md_escape(settings.model)} · SAE **{md_escape(name)}** at {md_escape(settings.hook)} · "
            f"{settings.d_sae:,} features")


@st.cache_data(show_spinner="Comparing the two SAEs…", max_entries=32)
def comparison(path_a: str, path_b: str, feature_id: int, corpus: str | None, top: int,
               versions: tuple) -> FeatureComparison:
    """Cached by the two files, the feature, the corpus and `versions` (data and label revisions of both)."""
    return compare_across_workspaces(widgets.open_workspace(path_a), widgets.open_workspace(path_b), feature_id,
                                     corpus_name=corpus, top=top)


def versions(ws_a: Workspace, ws_b: Workspace, corpus: str | None) -> tuple:
    keys = tuple(widgets.cache_key(ws, corpus) for ws in (ws_a, ws_b)) if corpus else ()
    return keys + (ws_a.label_revision(), ws_b.label_revision())


def pick_feature(ws_a: Workspace, corpus: str | None) -> int:
    """A feature of A: typed as a number, or found by its label."""
    number_col, search_col = st.columns(2)
    default = widgets.selected_feature(0) or 0
    feature = number_col.number_input("Feature of A", min_value=0, max_value=ws_a.d_sae - 1,
                                      value=min(int(default), ws_a.d_sae - 1), step=1, key="cmp_feature")
    query = search_col.text_input("…or find one by its label in A", key="cmp_search", placeholder="e.g. dog")
    if not query.strip():
        return int(feature)
    needle = query.strip().lower()
    labels = ws_a.labels(corpus)
    matches = [fid for fid, label in sorted(labels.items()) if needle in str(label).lower()][:MAX_MATCHES]
    if not matches:
        search_col.caption(f"No label of A contains “{md_escape(query)}”.")
        return int(feature)
    return int(search_col.selectbox(f"Matching features ({len(matches)})", matches, key="cmp_match",
                                    format_func=lambda fid: f"{fid}: {labels.get(fid)}"))


def neighbours(table: pd.DataFrame, columns: list[str]) -> None:
    shown = table.copy()
    shown["example"] = [None if not isinstance(text, str) else
                        (text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…") for text in shown["example"]]
    st.dataframe(shown[columns], hide_index=True, width="stretch", column_config={
        "feature_id": st.column_config.NumberColumn("B feature", format="%d"),
        "cosine": st.column_config.NumberColumn("decoder cosine", format="%.3f"),
        "jaccard": st.column_config.NumberColumn("Jaccard", format="%.3f", help="shared documents / documents either fires on"),
        "n_both": st.column_config.NumberColumn("both fire", format="%d", help="documents where both features fire"),
        "label": st.column_config.TextColumn("B's label"),
        "example": st.column_config.TextColumn("example (where B's feature fires most)"),
    })


def show(result: FeatureComparison, name_b: str) -> None:
    label = f" ({md_escape(result.label_a)})" if result.label_a else ""
    st.subheader(f"Feature {result.feature_id} of A{label}")
    by_decoder, by_cofiring = st.columns(2)
    with by_decoder:
        st.markdown(f"**Nearest in {md_escape(name_b)} by decoder cosine**")
        st.caption("The directions the features write into the residual stream; says nothing about when they fire.")
        neighbours(result.by_decoder, ["feature_id", "cosine", "jaccard", "label", "example"]
                   if result.corpus else ["feature_id", "cosine", "label", "example"])
    with by_cofiring:
        st.markdown(f"**Nearest in {md_escape(name_b)} by co-firing**")
        if result.corpus is None:
            st.info("Pick a corpus embedded in both workspaces to see which features fire on the same documents.")
        elif result.n_docs_a == 0:
            st.info(f"Feature {result.feature_id} of A fires on no document of **{md_escape(result.corpus)}**.")
        else:
            st.caption(f"Jaccard of the documents each fires on in **{md_escape(result.corpus)}** (A's feature fires "
                       f"on {result.n_docs_a:,}); features firing on few documents can tie.")
            neighbours(result.by_cofiring, ["feature_id", "jaccard", "n_both", "cosine", "label", "example"])


st.title("Compare SAEs")
st.caption("Two workspaces on one reader model, each with its own SAE (say the lexical and the semantic one): "
           "for a feature of A, the features of B nearest to it by decoder direction and by the documents they "
           "fire on. Add the same corpus to both workspaces to compare co-firing.")
paths = widgets.workspace_paths()
if len(paths) < 2:
    st.info("Comparing needs two workspaces on the same reader model. Create a second one, with another SAE, "
            "under **New workspace** on the Corpora page.")
    widgets.page_link("corpora", "Go to Corpora", ":material/library_books:")
    st.stop()
by_name = {p.stem: p for p in paths}
names = list(by_name)
current = widgets.current_workspace()
col_a, col_b = st.columns(2)
name_a = col_a.selectbox("Workspace A", names, key="cmp_a",
                         index=names.index(current.path.stem) if current is not None and current.path.stem in names else 0)
others = [n for n in names if n != name_a]
name_b = col_b.selectbox("Workspace B", others, key="cmp_b")
try:
    ws_a, ws_b = (widgets.open_workspace(str(by_name[n])) for n in (name_a, name_b))
    col_a.caption(sae_line(ws_a))
    col_b.caption(sae_line(ws_b))
    check_comparable(ws_a, ws_b)
    corpora = shared_corpora(ws_a, ws_b)
    corpus_pick = st.selectbox("Corpus in both (for co-firing)", [*corpora, NO_CORPUS], key="cmp_corpus",
                               format_func=lambda c: "none: decoder cosine only" if c == NO_CORPUS else c)
    corpus = None if corpus_pick == NO_CORPUS else corpus_pick
    if not corpora:
        st.caption("No corpus of the same name is embedded in both workspaces; add the same file to both to compare "
                   "co-firing.")
    feature = pick_feature(ws_a, corpus)
    top = st.slider("Neighbours to show", 3, 30, 10, key="cmp_top")
    result = comparison(str(ws_a.path), str(ws_b.path), feature, corpus, top, versions(ws_a, ws_b, corpus))
except UserError as exc:
    st.error(md_escape(exc, max_len=None), icon=":material/error:")
    st.stop()
show(result, name_b)
