"""A diff's findings labelled by an LLM, beside the offline label each one already has.

The feature that names each finding (its lead, unless the lead's label names nothing:
`Finding.named_by`) is LLM-labelled (explain, then score on held-out samples:
`backend.labels.llm_label_features`), each in the corpus of the side where it is more common, since that is where
it fires. Labels already asked for are read back from the workspace, so a second call costs no LLM call. The
offline label (`source = 'auto'`, from `backend.label_text`) stays beside the LLM's: it says which tokens the
feature fires on, the LLM's what they mean.

The LLM is the one given, else the configured one (`configured_llm`): the operator's OpenAI-compatible server
(`backend.labels.operator_llm_config`), else the reader model when it is an instruct model of 1B parameters or
more (`backend.reader_llm`)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from backend.analysis.findings import Finding
from backend.context import WorkspaceContext
from backend.labels import Labeller, LLMError, llm_label_features, operator_llm_config
from backend.reader_llm import reader_chat, reader_llm_status
from backend.store import Corpus, Store

FINDING_LABEL_COLUMNS = ["finding", "side", "feature_id", "offline_label", "offline_score", "llm_label", "llm_score",
                         "cached"]
Progress = Callable[[int, int], None]


def configured_llm(ctx: WorkspaceContext) -> tuple[Labeller | None, str]:
    """(the LLM that labels when none is given, who it is), or (None, why there is none)."""
    cfg = operator_llm_config()
    if cfg is not None:
        return cfg, f"the LLM server at {cfg.base_url} (model {cfg.model})"
    status = reader_llm_status(ctx.reader)
    if status.usable:
        return reader_chat(ctx.reader), status.reason
    return None, f"no LLM server is configured and the reader model cannot serve: {status.reason}"


def require_llm(ctx: WorkspaceContext, llm: Labeller | None, purpose: str) -> Labeller:
    """`llm`, else the configured one (`configured_llm`), else an LLMError that says why there is none."""
    if llm is not None:
        return llm
    found, why = configured_llm(ctx)
    if found is None:
        raise LLMError(f"{purpose} only with an LLM: {why}. Set SAEDASH_LLM_BASE_URL and SAEDASH_LLM_MODEL, or pass "
                       "llm= (an LLMConfig or a chat function).")
    return found


def offline_labels(store: Store, corpus_id: int, feature_ids: Iterable[int]) -> dict[int, tuple[str, float]]:
    """{feature_id: (label, score)} of the offline ('auto') labels derived from the corpus."""
    ids = [int(f) for f in feature_ids]
    if not ids:
        return {}
    rows = store.query_all(
        "SELECT feature_id, label, score FROM feature_labels WHERE source = 'auto' AND corpus_id = ? "
        "AND feature_id IN (SELECT unnest(?::INTEGER[]))", [int(corpus_id), ids])
    return {int(f): (str(lab), float("nan") if score is None else float(score)) for f, lab, score in rows}


def _corpus_groups(findings: Sequence[Finding], corpus_a: Corpus, corpus_b: Corpus) -> list[tuple[Corpus, list[int]]]:
    """Each corpus with the features that name the findings to label there (side-B findings in B), in findings
    order."""
    groups: dict[int, tuple[Corpus, list[int]]] = {}
    for f in findings:
        handle = corpus_b if f.side == "b" else corpus_a
        group = groups.setdefault(handle.corpus_id, (handle, []))[1]
        fid = f.named_by
        if fid not in group:
            group.append(fid)
    return list(groups.values())


def label_findings(ctx: WorkspaceContext, findings: Sequence[Finding], corpus_a: Corpus, corpus_b: Corpus | None = None,
                   llm: Labeller | None = None, progress: Progress | None = None, **kwargs: Any) -> pd.DataFrame:
    """One row per finding (summary order): finding, side, feature_id (the feature that names it,
    `Finding.named_by`: its lead unless the lead's label names nothing), offline_label, offline_score, llm_label,
    llm_score (held-out accuracy), cached (the LLM label was already stored).

    corpus_b: where side-B documents live (None: a split of corpus_a by a column). llm: an LLMConfig or a chat
    function; None = `configured_llm`. progress(done, total) after each feature. kwargs go to
    `llm_label_features` (force, n_show, n_holdout, seed). Raises LLMError when no LLM is given or configured."""
    llm = require_llm(ctx, llm, "Findings are LLM-labelled")
    groups = _corpus_groups(findings, corpus_a, corpus_b if corpus_b is not None else corpus_a)
    total, done = sum(len(ids) for _, ids in groups), 0
    llm_rows: dict[tuple[int, int], pd.Series] = {}
    offline: dict[tuple[int, int], tuple[str, float]] = {}
    for handle, ids in groups:
        def report(n: int, _total: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + n, total)

        table = llm_label_features(ctx, handle, ids, llm, progress=report, **kwargs)
        llm_rows.update({(handle.corpus_id, int(r.feature_id)): r for _, r in table.iterrows()})
        offline.update({(handle.corpus_id, f): v for f, v in offline_labels(ctx.store, handle.corpus_id, ids).items()})
        done += len(ids)
    return _side_by_side(findings, corpus_a, corpus_b if corpus_b is not None else corpus_a, llm_rows, offline)


def _side_by_side(findings: Sequence[Finding], corpus_a: Corpus, corpus_b: Corpus,
                  llm_rows: dict[tuple[int, int], pd.Series], offline: dict[tuple[int, int], tuple[str, float]]
                  ) -> pd.DataFrame:
    rows = []
    for i, f in enumerate(findings):
        fid = f.named_by
        key = ((corpus_b if f.side == "b" else corpus_a).corpus_id, fid)
        off_label, off_score = offline.get(key, (None, float("nan")))
        llm_row = llm_rows[key]
        rows.append((i, f.side, fid, off_label, off_score, str(llm_row["label"]), float(llm_row["score"]),
                     bool(llm_row["cached"])))
    return pd.DataFrame(rows, columns=FINDING_LABEL_COLUMNS)
