"""The first launch (backend.demo.ensure_default_workspace) on a tiny workspace: every step after the
embedding reports its own progress, from 0 to 1."""
from __future__ import annotations

from dataclasses import replace

from backend import demo
from backend.workspace import Workspace


def test_first_launch_reports_every_step_from_start_to_end(tiny_workspace, tiny_docs, monkeypatch, one_thread):
    ws = tiny_workspace
    monkeypatch.setattr(demo, "prepare_builtin", lambda *a, **k: None)
    monkeypatch.setattr(demo, "ensure_default_sae", lambda: None)
    monkeypatch.setattr(demo, "default_workspace_path", lambda: ws.path)
    monkeypatch.setattr(demo, "demo_corpus", lambda n: tiny_docs.head(n))
    monkeypatch.setattr(Workspace, "open_or_create", classmethod(lambda cls, path, spec=None, device=None: ws))
    embedded, steps = [], []
    out = demo.ensure_default_workspace(embedded.append, n_docs=len(tiny_docs),
                                        step_progress=lambda step, fraction: steps.append((step, fraction)))
    assert out is ws and embedded[-1].docs_done == len(tiny_docs)
    reported = [s for s, _ in steps if s != "done"]
    assert list(dict.fromkeys(reported)) == list(demo.FIRST_LAUNCH_STEPS)  # each named step, in order
    assert demo.FIRST_LAUNCH_STEPS == ("statistics", "contexts", "labels", "logit lens")  # vectors: in the background
    for step in demo.FIRST_LAUNCH_STEPS:
        fractions = [f for s, f in steps if s == step]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0, (step, fractions)  # its own bar: starts, then ends
        assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
        if step in ("contexts", "labels", "logit lens"):  # steps working in parts report in between too
            assert any(0.0 < f < 1.0 for f in fractions), (step, fractions)
    # a second launch finds everything done: no step runs again
    steps.clear()
    demo.ensure_default_workspace(None, n_docs=len(tiny_docs), step_progress=lambda s, f: steps.append((s, f)))
    assert steps == []
    corpus = ws.corpus(demo.DEMO_CORPUS)
    assert demo.is_demo_corpus(ws, corpus) and not demo.is_demo_corpus(ws, replace(corpus, name="other"))


def test_compute_logits_reports_each_block(tiny_workspace):
    from backend.feature_precompute import compute_logits

    fractions = []
    df = compute_logits(tiny_workspace, k=3, block=16, progress=fractions.append)
    assert fractions == [0.25, 0.5, 0.75, 1.0] and df["feature_id"].nunique() == tiny_workspace.d_sae
