"""One context of a feature as a line of text, the firing token marked «like this» (the evidence of a label).

Plain text: pages escape it where they render it. `backend.label_text` re-exports these functions."""
from __future__ import annotations

import re

import pandas as pd


def _flat(s: str) -> str:
    """Newlines as ⏎, runs of whitespace as one space (edges kept)."""
    s = re.sub(r"\r\n|\r|\n", " ⏎ ", s)
    return re.sub(r"\s+", " ", s)


def mark_context(before: str, token: str, after: str, before_chars: int = 32, after_chars: int = 24) -> str:
    """One line `… in «certain» cases …`: the firing token marked «…», a few words either side.

    Plain text: pages escape it where they render it."""
    lead = token[: len(token) - len(token.lstrip())]
    trail = token[len(token.rstrip()):]
    shown = token.strip()
    if not shown:
        shown, lead, trail = ("⏎" if "\n" in token or "\r" in token else "␣"), "", ""
    left, right = _flat(before + lead), _flat(trail + after)
    if len(left.strip()) > before_chars:
        cut = left[-before_chars:]
        space = cut.find(" ")
        left = "… " + (cut[space + 1:] if 0 <= space < len(cut) - 1 else cut).lstrip()
    if len(right.strip()) > after_chars:
        cut = right[:after_chars]
        space = cut.rfind(" ")
        right = (cut[:space] if space > 0 else cut).rstrip() + " …"
    return (left + "«" + _flat(shown).strip() + "»" + right).strip()


def evidence(contexts: pd.DataFrame, feature_id: int | None = None, n: int = 1, before_chars: int = 32,
             after_chars: int = 24) -> list[str]:
    """Up to `n` marked contexts, strongest first, from `feature_contexts` rows (rank, before, token, after;
    with feature_id, pass the feature to pick its rows)."""
    rows = contexts
    if feature_id is not None and "feature_id" in rows:
        rows = rows[rows["feature_id"] == int(feature_id)]
    if "rank" in rows:
        rows = rows.sort_values("rank")
    return [mark_context(str(b or ""), str(t or ""), str(a or ""), before_chars, after_chars)
            for b, t, a in rows[["before", "token", "after"]].head(n).itertuples(index=False)]


def evidence_text(contexts: pd.DataFrame, feature_id: int | None = None, **kwargs: int) -> str:
    """The feature's strongest context with its firing token marked «…» ("" when there is none)."""
    found = evidence(contexts, feature_id, n=1, **kwargs)
    return found[0] if found else ""
