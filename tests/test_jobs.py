"""Resumable embedding: a job killed at any point continues with no lost and no duplicated rows."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pandas as pd

from backend.background import JobRegistry
from backend.jobs import JobConfig, embed_corpus
from backend.workspace import Workspace, WorkspaceSpec
from tests.dtypes import assert_rows_agree_in

KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from backend.models import load_reader
    from backend.saes import load_sae
    from backend.store import Store
    from backend.workspace import Workspace, WorkspaceSpec
    from backend.jobs import JobConfig

    ws_path, model_dir, sae_dir, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}
    original = Store.write_embeddings

    def dying_write(self, corpus_id, doc_ids, rows):
        calls["n"] += 1
        if calls["n"] < kill_at:
            return original(self, corpus_id, doc_ids, rows)
        # die inside the transaction, after the feature rows are inserted and before the commit
        import pandas as pd
        with self.transaction() as tx:
            tx.insert_df("doc_features", pd.DataFrame({"doc_id": doc_ids[rows.doc], "feature_id": rows.feature}),
                         fixed={"corpus_id": corpus_id})
            os.kill(os.getpid(), signal.SIGKILL)

    Store.write_embeddings = dying_write
    ws = Workspace.open(ws_path, device="cpu", reader=load_reader(model_dir, device="cpu"), sae=load_sae(sae_dir, device="cpu"))
    ws.embed("big", job_cfg=JobConfig(docs_per_batch=5, overlap_writes=bool(int(sys.argv[5]))))
    """
)


def make_corpus(tiny_docs: pd.DataFrame, n: int = 60) -> pd.DataFrame:
    reps = -(-n // len(tiny_docs))
    df = pd.concat([tiny_docs] * reps, ignore_index=True).head(n).copy()
    df["text"] = [f"{t} {'the ' * (i % 7)}".strip() for i, t in enumerate(df["text"])]
    return df


def feature_rows(ws: Workspace) -> pd.DataFrame:
    return ws.store.query_df(
        "SELECT doc_id, feature_id, max_act, argmax_pos, n_active FROM doc_features ORDER BY doc_id, feature_id"
    )


def exact_rows_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got.drop(columns="max_act"), expected.drop(columns="max_act"))
    assert np.allclose(got["max_act"], expected["max_act"], atol=1e-5)
    assert not got.duplicated(["doc_id", "feature_id"]).any()


def test_killed_job_resumes_without_loss_or_duplicates(tmp_path, tiny_reader, tiny_sae, tiny_sae_dir, tiny_model_dir, tiny_docs):
    corpus = make_corpus(tiny_docs)
    # reference: one clean run
    spec = WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0)  # exact rows
    ref = Workspace.create(tmp_path / "ref.duckdb", spec, reader=tiny_reader, sae=tiny_sae)
    ref.add_corpus("big", corpus, "text")
    embed_corpus(ref.store, "big", ref.reader, ref.sae, ref.hook, ref.embed_config, JobConfig(docs_per_batch=7))
    expected = feature_rows(ref)
    ref.close()

    # both kills (without and with overlapped writes) run at once, each in its own process and file
    procs = {}
    for overlap in (0, 1):
        path = tmp_path / f"killed{overlap}.duckdb"
        ws = Workspace.create(path, spec, reader=tiny_reader, sae=tiny_sae)
        ws.add_corpus("big", corpus, "text")
        ws.close()
        procs[path] = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(path), str(tiny_model_dir), str(tiny_sae_dir), "4", str(overlap)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    for path, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        assert proc.returncode == -9, stderr[-2000:]
        ws = Workspace.open(path, reader=tiny_reader, sae=tiny_sae)
        done = ws.store.query_df("SELECT doc_id FROM doc_status")["doc_id"]
        assert len(done) == 15 and len(set(done)) == 15  # three committed batches of five
        partial = feature_rows(ws)
        assert set(partial["doc_id"]) <= set(done)  # the killed batch left nothing behind
        assert ws.store.corpus("big").status == "embedding"
        state = embed_corpus(ws.store, "big", ws.reader, ws.sae, ws.hook, ws.embed_config, JobConfig(docs_per_batch=5))
        assert state.status == "done" and state.docs_done == 60
        got = feature_rows(ws)
        # other batches than the reference's: float32 rows equal, bf16 rows agree to bf16 precision
        assert_rows_agree_in(ws.settings.dtype, got, expected, exact_rows_equal)
        ws.close()


def test_cancel_then_resume_and_progress_callback(tiny_workspace, tiny_docs):
    ws = tiny_workspace
    ws.add_corpus("big", make_corpus(tiny_docs, 40), "text")
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append((p.docs_done, p.status))
        if p.docs_done >= 10:
            cancel.set()

    state = embed_corpus(ws.store, "big", ws.reader, ws.sae, ws.hook, ws.embed_config, JobConfig(docs_per_batch=5), progress, cancel)
    assert state.status == "cancelled" and ws.store.corpus("big").status == "pending"
    assert len(ws.store.pending_doc_ids("big")) == 30
    state = embed_corpus(ws.store, "big", ws.reader, ws.sae, ws.hook, ws.embed_config, JobConfig(docs_per_batch=5), progress)
    assert state.status == "done" and ws.store.corpus("big").n_embedded == 40
    assert seen[0] == (5, "running") and seen[-1] == (40, "done")
    first_run = [d for d, s in seen[: seen.index((10, "running")) + 1]]
    assert first_run == [5, 10]


def test_registry_never_runs_two_jobs_for_one_corpus():
    reg = JobRegistry()
    gate = threading.Event()
    runs = []

    def run(progress, cancel):
        runs.append(1)
        gate.wait(5)

    a = reg.start("ws", 1, "c", 10, run)
    b = reg.start("ws", 1, "c", 10, run)
    assert a is b and a.running
    gate.set()
    a.thread.join(5)
    assert runs == [1] and not a.running
    c = reg.start("ws", 1, "c", 10, lambda p, c: None)
    c.thread.join(5)
    assert c is not a


def test_stop_all_cancels_the_running_jobs_and_waits_for_them():
    """What runs at exit (atexit): every running job is told to stop and joined, so no daemon thread is left inside
    torch or DuckDB when the interpreter unwinds it by force. A job that ignores the request costs at most the
    timeout."""
    reg = JobRegistry()
    stopped = []

    def polite(progress, cancel):
        cancel.wait(30)
        stopped.append(cancel.is_set())

    jobs = [reg.start("ws", i, f"c{i}", 10, polite, kind=k) for i, k in ((1, "embed"), (1, "feature-index"), (2, "embed"))]
    stubborn = reg.start("ws", 3, "c3", 10, lambda p, c: time.sleep(2))
    t0 = time.monotonic()
    reg.stop_all(timeout_s=0.5)
    assert stopped == [True, True, True] and not any(j.running for j in jobs)
    assert stubborn.running and time.monotonic() - t0 < 1.5
    stubborn.thread.join(5)


def test_a_job_still_running_at_exit_is_stopped_before_the_interpreter_finalizes(tmp_path):
    """The process-wide registry stops its jobs at exit: a job waiting on its cancel event sees it set."""
    flag = tmp_path / "cancelled"
    script = textwrap.dedent(f"""
        from backend.background import REGISTRY
        def run(progress, cancel):
            if cancel.wait(60):
                open({str(flag)!r}, "w").write("yes")
        REGISTRY.start("ws", 1, "c", 10, run)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-2000:]
    assert flag.read_text() == "yes"


def test_model_setup_messages_reach_the_job_status():
    """A first use that installs or dequantizes the reader reports it through the job, then embedding clears it."""
    from backend import background, builtin_models, jobs
    from backend.store import Corpus

    class SettingUpWorkspace:
        path = "ws-setup"

        def embed(self, corpus_id, progress, cancel, job_cfg, finalize_progress):
            builtin_models._notifier(None)("Installing the packages of gemma-3-270m (one time, about 250 MB)…")
            progress(jobs.Progress("c", 1, 2, 10, 1.0))

    seen: list = []
    corpus = Corpus(7, "c", None, "text", [], n_docs=2, n_embedded=0, n_tokens=0, status="pending")
    job = background.start_embedding(SettingUpWorkspace(), corpus, registry=JobRegistry(), listeners=[seen.append])
    job.thread.join(10)
    notes = [p.note for p in seen]
    assert notes[0] == "Installing the packages of gemma-3-270m (one time, about 250 MB)…"
    assert seen[1].note is None and seen[-1].status == "done"
