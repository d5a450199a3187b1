"""The layering rules of issue 8, checked by reading the source (grep-style), so a change that breaks one fails here.

- pages are layout: they never reach into the workspace's store;
- the backend never imports Streamlit or builds plotly figures;
- only backend/store/ touches the DuckDB connection, and only its schema module creates tables;
- backend services take a typed Workspace, not `ws: Any`;
- pages import modules under names that say what they hold, and use Material icons, never emoji."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "backend" / "store"


def sources(*folders: str) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        path = ROOT / folder
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def offending(files: list[Path], pattern: str, flags: int = re.M) -> list[str]:
    """`file:line: text` for every line of `files` matching `pattern` (comments and docstrings included:
    a rule worth keeping is worth keeping out of examples too)."""
    regex = re.compile(pattern, flags)
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if regex.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return hits


def test_the_checks_see_the_code():
    """Guards the guards: the folders exist and a planted violation is found."""
    assert len(sources("pages")) >= 5 and len(sources("backend")) >= 20 and (STORE / "schema.py").exists()
    planted = ROOT / "tests" / "_planted_violation.py"
    planted.write_text("ws.store.query_df('SELECT 1')\nimport duckdb\n", encoding="utf-8")
    try:
        assert offending([planted], r"\bws\.store\b") and offending([planted], r"^\s*import duckdb")
    finally:
        planted.unlink()


def test_pages_never_reach_into_the_store():
    assert offending(sources("pages", "app.py"), r"\b_?ws\.store\b|\.store\.") == []


def test_the_backend_never_imports_the_ui():
    assert offending(sources("backend"), r"^\s*(import|from)\s+(streamlit|plotly)\b") == []
    assert offending(sources("backend"), r"\bplotly\b|\bgo\.Figure\b") == []


def test_only_the_store_package_touches_duckdb():
    outside = [p for p in sources("backend", "pages", "app.py") if STORE not in p.parents]
    assert offending(outside, r"^\s*(import duckdb|from duckdb)") == []
    assert offending(outside, r"\._?con\b(?!\w)") == []


def test_tables_are_created_only_in_the_schema_module():
    files = [p for p in sources("backend", "pages", "app.py") if p != STORE / "schema.py"]
    assert offending(files, r"CREATE\s+TABLE", re.M | re.I) == []


def test_backend_signatures_take_a_typed_workspace():
    assert offending(sources("backend"), r"\bws:\s*Any\b") == []


def test_pages_import_modules_under_names_that_say_what_they_hold():
    """No `from backend import features as F` or `analysis_widgets as aw` (np, pd, st… are conventions, not ours)."""
    project_alias = r"^\s*(from\s+(backend|pages)\S*\s+import|import\s+(backend|pages)\S*)\s+\S+\s+as\s+[A-Za-z]{1,2}\s*$"
    assert offending(sources("pages", "app.py"), project_alias) == []


EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


@pytest.mark.parametrize("path", sources("pages", "app.py"), ids=lambda p: str(p.relative_to(ROOT)))
def test_icons_are_material_icons_not_emoji(path):
    """Emoji render as empty boxes in headless Chromium and on machines without an emoji font."""
    text = path.read_text(encoding="utf-8")
    icons = re.findall(r"\b(?:page_)?icon\s*=\s*(['\"])(.*?)\1", text)
    assert all(value.startswith(":material/") and value.endswith(":") for _, value in icons), icons
    assert [line for line in text.splitlines() if EMOJI.search(line)] == []
