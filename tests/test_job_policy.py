"""Background jobs as the dashboard starts them (backend.background): they follow a corpus by id, report their
finishing steps, repair a corpus whose finishing is missing, and resume what a previous server left."""
from __future__ import annotations

import threading

import pandas as pd
import pytest

from backend.background import (
    JobRegistry, interrupted, next_action, resume_interrupted, start_embedding, start_finishing,
)
from backend.jobs import JobConfig, Progress, embed_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


def feature_stats_rows(ws, corpus_id: int) -> int:
    return int(ws.store.query_one("SELECT count(*) FROM feature_stats WHERE corpus_id = ?", [corpus_id])[0])


def finished(job, timeout: float = 120) -> None:
    job.thread.join(timeout)
    assert not job.running and job.error is None, job.error


@pytest.fixture()
def docs(tiny_docs) -> pd.DataFrame:
    return pd.concat([tiny_docs] * 2, ignore_index=True)  # 24 documents: six batches of four


def test_a_corpus_renamed_while_its_job_runs_keeps_embedding(tiny_workspace, docs):
    """Issue 12, problem 2: the rename lands between two batches; the job still embeds every document and
    finishes the corpus (statistics present, status ready) under its new name."""
    ws = tiny_workspace
    corpus_id = ws.add_corpus("conc", docs, "text")
    first_batch, renamed = threading.Event(), threading.Event()

    def hold_after_first_batch(p: Progress) -> None:
        if p.docs_done and not first_batch.is_set():
            first_batch.set()
            assert renamed.wait(30)

    job = start_embedding(ws, ws.corpus(corpus_id), JobRegistry(), JobConfig(docs_per_batch=4, overlap_writes=False),
                          listeners=[hold_after_first_batch])
    assert first_batch.wait(60)
    assert 0 < ws.corpus(corpus_id).n_embedded < len(docs)  # really mid-job
    ws.rename_corpus(corpus_id, "conc_r")
    renamed.set()
    finished(job)
    after = ws.corpus("conc_r")
    assert (after.corpus_id, after.n_embedded, after.status) == (corpus_id, len(docs), "ready")
    assert feature_stats_rows(ws, corpus_id) == ws.d_sae
    assert job.progress.status == "done" and job.progress.step is None
    assert not ws.has_corpus("conc")  # a job following the name would have looked for this one and failed


def test_finish_repairs_a_corpus_that_is_ready_without_its_statistics(tiny_workspace, docs):
    """The broken state of issue 12 (ready, empty feature tables) is offered "finish", and finishing reports
    its steps and restores the statistics."""
    ws = tiny_workspace
    corpus_id = ws.add_corpus("c", docs, "text")
    ws.embed(corpus_id)
    registry = JobRegistry()
    assert next_action(ws, ws.corpus(corpus_id), registry) is None
    ws.store.execute("DELETE FROM feature_stats WHERE corpus_id = ?", [corpus_id])
    ws.store.set_status(corpus_id, "ready")
    broken = ws.corpus(corpus_id)
    assert next_action(ws, broken, registry) == "finish" and broken not in interrupted(ws, registry)

    steps: list[str] = []
    job = start_finishing(ws, broken, registry, listeners=[lambda p: steps.append(p.step)])
    finished(job)
    assert feature_stats_rows(ws, corpus_id) == ws.d_sae and ws.corpus(corpus_id).status == "ready"
    assert {"statistics", "labels", "logit lens"} <= set(steps) and steps[-1] is None  # then "done"
    assert next_action(ws, ws.corpus(corpus_id), registry) is None


def test_work_left_by_a_previous_server_is_resumed_and_failures_wait_for_the_user(tiny_workspace, docs):
    ws = tiny_workspace
    half = ws.add_corpus("half", docs, "text")
    cancel = threading.Event()
    embed_corpus(ws.store, half, ws.reader, ws.sae, ws.hook, ws.embed_config, JobConfig(docs_per_batch=4),
                 lambda p: cancel.set(), cancel)
    ws.store.set_status(half, "embedding")  # as a server killed mid-job leaves it
    failed = ws.add_corpus("failed", docs.head(4), "text")
    embed_corpus(ws.store, failed, ws.reader, ws.sae, ws.hook, ws.embed_config)
    ws.store.set_status(failed, "finalizing", "Finishing failed: RuntimeError: boom")
    registry = JobRegistry()

    assert [c.corpus_id for c in interrupted(ws, registry)] == [half]
    assert next_action(ws, ws.corpus(failed), registry) == "finish"  # a button, not an automatic retry loop
    jobs = resume_interrupted(ws, registry)
    assert len(jobs) == 1
    finished(jobs[0])
    assert ws.corpus(half).status == "ready" and ws.corpus(half).n_embedded == len(docs)
    assert interrupted(ws, registry) == [] and resume_interrupted(ws, registry) == []
