"""The layering rules of issue 8, checked by reading the source (grep-style and from the AST), so a change that breaks one fails here.

- pages are layout: they never reach into the workspace's store;
- the backend never imports Streamlit or builds plotly figures;
- only backend/store/ touches the DuckDB connection, and only its schema module creates tables;
- imports point one way (no cycle; nothing below the façade imports it) and no function is over 60 lines,
  read from the AST;
- pages import modules under names that say what they hold, and use Material icons, never emoji."""
from __future__ import annotations

import ast
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


# -- import direction and function length, from the AST ------------------------------------------------------
# Every import counts: module level, inside functions, under `if TYPE_CHECKING`; relative imports are resolved.
# A function-level import hides a cycle from Python, not from the design, so it counts here.
FACADE = "backend.workspace"
MAX_FUNCTION_LINES = 60


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """{dotted name: file} for app.py and every module of backend/ and pages/ (a package is its __init__)."""
    files = [root / "app.py"] if (root / "app.py").exists() else []
    files += sorted((root / "backend").rglob("*.py")) + sorted((root / "pages").rglob("*.py"))
    modules = {}
    for path in files:
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _project_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """The project module `dotted` names, or the package holding the name (an attribute of it); None outside."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            # `from pkg import sub` imports pkg.sub (and runs pkg's __init__); `from mod import name` imports mod
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in (_project_module(c, modules) for c in candidates) if m and m != name}
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), members sorted.

    A package's __init__ importing its own submodules, with nothing else in the loop, is the package's
    public face, not a cycle of design (a submodule `from pkg.sub import x` runs pkg/__init__ first)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]


def below(graph: dict[str, set[str]], top: str) -> set[str]:
    """Every module `top` imports, directly or through others (`top` itself excluded)."""
    seen: set[str] = set()
    todo = list(graph.get(top, ()))
    while todo:
        m = todo.pop()
        if m not in seen and m != top:
            seen.add(m)
            todo += graph.get(m, ())
    return seen


def long_functions(root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:function:lines` for every function or method (nested ones too) in backend/ and pages/ over `limit` lines."""
    out = []
    for path in sorted((root / "backend").rglob("*.py")) + sorted((root / "pages").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.name}:{lines}")
    return out


def test_no_import_cycle_among_project_modules():
    cycles = import_cycles(import_graph())
    assert cycles == [], "import cycles (each a set of modules that import one another):\n" + "\n".join(
        f"  {len(c)} modules: {', '.join(c)}" for c in cycles)


def test_nothing_below_the_facade_imports_it():
    graph = import_graph()
    assert FACADE in graph and len(below(graph, FACADE)) >= 10  # the façade and what it stands on are seen
    offenders = sorted(m for m in below(graph, FACADE) if FACADE in graph[m])
    assert offenders == [], f"modules that {FACADE} stands on but that import it back: {offenders}"


def test_no_function_is_longer_than_60_lines():
    too_long = long_functions()
    assert too_long == [], f"functions over {MAX_FUNCTION_LINES} lines (file:function:lines): {', '.join(too_long)}"


PLANTED = {
    "app.py": "import backend.workspace\n",
    "backend/__init__.py": "from backend import config as _config\n",
    "backend/config.py": "X = 1\n",
    "backend/workspace.py": "from backend.svc import run\nfrom . import clean\n",
    "backend/clean.py": "from backend.config import X\n",
    # a cycle hidden from Python: one side imports inside a function, the other under TYPE_CHECKING, relatively
    "backend/svc.py": "def run():\n    from .helpers import util\n    return util()\n",
    "backend/helpers/__init__.py": "from backend.helpers.util import util\n",
    "backend/helpers/util.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..workspace import Workspace\n"
                                "def util():\n" + "    x = 1\n" * 60 + "    return x\n"),
    "pages/home.py": "def ok():\n" + "    pass\n" * 59,
}


def test_the_ast_checks_find_a_planted_cycle_facade_import_and_long_function(tmp_path):
    """Guards the guards: on planted sources each check finds exactly what was planted, and nothing in a control."""
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    graph = import_graph(tmp_path)
    assert graph["backend.helpers.util"] == {"backend.workspace"} and graph["backend.svc"] == {"backend.helpers", "backend.helpers.util"}
    assert import_cycles(graph) == [["backend.helpers", "backend.helpers.util", "backend.svc", "backend.workspace"]]
    assert below(graph, FACADE) == {"backend.svc", "backend.helpers", "backend.helpers.util", "backend.clean",
                                    "backend.config", "backend"}
    assert sorted(m for m in below(graph, FACADE) if FACADE in graph[m]) == ["backend.helpers.util"]
    assert long_functions(tmp_path) == ["backend/helpers/util.py:util:62"]  # pages/home.py:ok has 60: allowed
    # the control: the same tree without the upward import has no cycle and no façade import
    (tmp_path / "backend/helpers/util.py").write_text("def util():\n    return 1\n", encoding="utf-8")
    graph = import_graph(tmp_path)
    assert import_cycles(graph) == [] and not any(FACADE in graph[m] for m in below(graph, FACADE))
    assert long_functions(tmp_path) == []


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
