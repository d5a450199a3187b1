"""The Ray Data engine: same rows as the local engine, kill-and-resume without loss or duplicates, CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from backend.engines.ray_engine import RayConfig, embed_with_ray, shard_docs, shard_folder  # noqa: E402
from backend.jobs import JobConfig  # noqa: E402
from backend.workspace import Workspace, WorkspaceSpec  # noqa: E402
from tests.dtypes import BF16_REL, assert_rows_agree_in, exact  # noqa: E402

ROWS_SQL = ("SELECT doc_id, feature_id, max_act, argmax_pos, n_active, sum_act, sum_code FROM doc_features "
            "ORDER BY doc_id, feature_id")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of two CPUs for this module (the engine joins it instead of starting its own)."""
    from backend.config import REPO_ROOT

    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def corpus_frame(tiny_docs: pd.DataFrame, n: int) -> pd.DataFrame:
    reps = -(-n // len(tiny_docs))
    df = pd.concat([tiny_docs] * reps, ignore_index=True).head(n).copy()
    df["text"] = [f"{t} {'the ' * (i % 7)}{'film ' * (i % 3)}".strip() for i, t in enumerate(df["text"])]
    return df


def new_workspace(path, tiny_reader, tiny_sae, tiny_sae_dir, docs: pd.DataFrame, **spec) -> Workspace:
    ws = Workspace.create(path, WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), **spec), device="cpu",
                          reader=tiny_reader, sae=tiny_sae)
    ws.add_corpus("c", docs, "text")
    return ws


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, dtype: str = "float32") -> None:
    """Equal rows in float32; in bf16 (other batches than the local engine's) rows that agree to its precision."""
    assert_rows_agree_in(dtype, got, want, exact_same_rows)


def exact_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    key = ["doc_id", "feature_id", "argmax_pos", "n_active"]
    pd.testing.assert_frame_equal(got[key].reset_index(drop=True), want[key].reset_index(drop=True))
    assert np.allclose(got["max_act"], want["max_act"], atol=1e-5)
    if want["sum_code"].notna().any():  # compact rows: the coded sum may differ by one step at most
        assert (np.abs(got["sum_code"].astype(int) - want["sum_code"].astype(int)) <= 1).all()
    else:
        assert np.allclose(got["sum_act"], want["sum_act"], atol=1e-5)
    assert not got.duplicated(["doc_id", "feature_id"]).any()


def test_export_orders_each_file_longest_first_after_the_head(tmp_path, tiny_reader, tiny_sae, tiny_sae_dir, tiny_docs):
    """What the Ray engine hands its actors: batches of similar lengths, the calibration documents first."""
    import pyarrow.parquet as pq

    ws = new_workspace(tmp_path / "x.duckdb", tiny_reader, tiny_sae, tiny_sae_dir, corpus_frame(tiny_docs, 45))
    store, cid = ws.store, ws.corpus("c").corpus_id
    parts = store.export_pending_texts(cid, tmp_path / "in", rows_per_file=20, rows_per_group=4, by_length=True, head=6)
    files = [pq.read_table(p).to_pandas() for p in parts]
    assert [len(f) for f in files] == [20, 20, 5]
    assert [pq.ParquetFile(p).metadata.num_row_groups for p in parts] == [5, 5, 2]
    everything = pd.concat(files, ignore_index=True)
    assert sorted(everything["doc_id"]) == sorted(store.pending_doc_ids(cid).tolist())  # each once
    head = files[0].head(6)
    assert sorted(head["doc_id"]) == sorted(store.pending_doc_ids(cid)[:6].tolist())
    for part in [head, files[0].iloc[6:], files[1], files[2]]:  # longest text first, ties by doc id
        key = list(zip(-part["text"].str.len(), part["doc_id"]))
        assert key == sorted(key)
    plain = pd.concat([pq.read_table(p).to_pandas() for p in store.export_pending_texts(cid, tmp_path / "plain", 20)])
    assert plain["doc_id"].tolist() == sorted(plain["doc_id"])  # the default: doc-id order
    ws.close()


def test_ray_engine_writes_the_local_engines_rows(tmp_path, local_ray, tiny_reader, tiny_sae, tiny_sae_dir, tiny_docs,
                                                  one_thread):
    """Default (compact) workspace: calibration from the shards, presence at ingest, progress, cleanup."""
    docs = corpus_frame(tiny_docs, 45)
    local = new_workspace(tmp_path / "local.duckdb", tiny_reader, tiny_sae, tiny_sae_dir, docs)
    local.embed("c", job_cfg=JobConfig(docs_per_batch=16))
    want = local.store.query_df(ROWS_SQL)

    ws = new_workspace(tmp_path / "ray.duckdb", tiny_reader, tiny_sae, tiny_sae_dir, docs)
    seen, notes = [], []
    state = ws.embed("c", engine="ray", ray=RayConfig(workers=2, docs_per_batch=7, input_rows_per_file=21),
                     progress=lambda p: (seen.append((p.docs_done, p.status)), notes.append(p.note)))
    assert state.status == "done" and ws.corpus("c").status == "ready" and ws.corpus("c").n_embedded == 45
    assert_same_rows(ws.store.query_df(ROWS_SQL), want, ws.settings.dtype)
    rtol = 1e-5 if exact(ws.settings.dtype) else BF16_REL
    assert np.allclose(ws.store.presence_scales().scale, local.store.presence_scales().scale, rtol=rtol)
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (45, "done") and len(seen) >= 7  # one report per 7-document shard
    assert notes[0] == "Starting 2 Ray workers (each loads the model and the SAE)" and notes[-1] is None
    assert all(n is None or n.startswith(("Starting 2 Ray workers", "Calibrating presence")) for n in notes)
    assert ws.store.query_one("SELECT count(*), sum(n_docs) FROM ingested_shards") == (7, 45)
    assert not shard_folder(ws.path, ws.corpus("c").corpus_id, RayConfig()).exists()  # shards and inputs cleaned up
    assert ws.store.query_one("SELECT count(*) FROM feature_stats WHERE corpus_id = ?", [ws.corpus("c").corpus_id])[0] > 0
    local.close(), ws.close()


@pytest.mark.slow
def test_cli_embed_with_the_ray_engine(tmp_path, local_ray, tiny_reader, tiny_sae, tiny_sae_dir, tiny_docs, one_thread,
                                       capsys):
    from backend.__main__ import main

    path = tmp_path / "cli.duckdb"
    ws = new_workspace(path, tiny_reader, tiny_sae, tiny_sae_dir, corpus_frame(tiny_docs, 12), presence_threshold=0.0)
    ws.close()
    assert main(["embed", str(path), "c", "--engine", "ray", "--workers", "2"]) == 0
    assert main(["embed", str(path), "c", "--workers", "2"]) == 2  # Ray flags without --engine ray
    assert "--engine ray" in capsys.readouterr().err
    ws = Workspace.open(path, reader=tiny_reader, sae=tiny_sae)
    assert ws.corpus("c").n_embedded == 12 and ws.corpus("c").status == "ready"
    ws.close()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import pandas as pd
    from backend.engines.ray_engine import RayConfig, embed_with_ray
    from backend.models import load_reader
    from backend.saes import load_sae
    from backend.store import Store
    from backend.workspace import Workspace

    path, model_dir, sae_dir, address, how, at = sys.argv[1:7]
    ws = Workspace.open(path, device="cpu", reader=load_reader(model_dir, device="cpu"), sae=load_sae(sae_dir, device="cpu"))

    def progress(p):
        if how == "progress" and p.docs_done >= int(at):  # other shards are on disk, written but not ingested
            os.kill(os.getpid(), signal.SIGKILL)

    calls = {"n": 0}
    original = Store.write_embeddings

    def dying_write(self, corpus_id, doc_ids, rows, shard=None):
        calls["n"] += 1
        if how != "ingest" or calls["n"] < int(at):
            return original(self, corpus_id, doc_ids, rows, shard)
        with self.transaction() as tx:  # die inside the ingest transaction, its rows inserted, before the commit
            tx.insert_df("doc_features", pd.DataFrame({"doc_id": doc_ids[rows.doc], "feature_id": rows.feature}),
                         fixed={"corpus_id": corpus_id})
            os.kill(os.getpid(), signal.SIGKILL)

    Store.write_embeddings = dying_write
    embed_with_ray(ws, "c", RayConfig(address=address, workers=2, docs_per_batch=5), progress)
""")


@pytest.mark.slow
@pytest.mark.parametrize("presence_threshold, how, at", [
    (0.0, "progress", 10),  # killed between shards, with later shards written but not ingested
    (0.8, "ingest", 3),  # killed inside the third shard's transaction (the shards held for calibration)
])
def test_ray_engine_killed_then_resumed_loses_and_duplicates_nothing(tmp_path, local_ray, tiny_reader, tiny_sae,
                                                                    tiny_sae_dir, tiny_model_dir, tiny_docs, one_thread,
                                                                    presence_threshold, how, at):
    docs = corpus_frame(tiny_docs, 60)
    ref = new_workspace(tmp_path / "ref.duckdb", tiny_reader, tiny_sae, tiny_sae_dir, docs,
                        presence_threshold=presence_threshold)
    ref.embed("c", job_cfg=JobConfig(docs_per_batch=9))
    want = ref.store.query_df(ROWS_SQL)
    ref.close()

    path = tmp_path / "killed.duckdb"
    new_workspace(path, tiny_reader, tiny_sae, tiny_sae_dir, docs, presence_threshold=presence_threshold).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path), str(tiny_model_dir), str(tiny_sae_dir), local_ray,
                           how, str(at)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ws = Workspace.open(path, reader=tiny_reader, sae=tiny_sae)
    cid = ws.corpus("c").corpus_id
    n_done = ws.corpus("c").n_embedded
    assert 10 <= n_done < 60 and ws.corpus("c").status == "embedding"
    assert ws.store.query_one("SELECT count(*) FROM doc_features WHERE doc_id NOT IN (SELECT doc_id FROM doc_status)")[0] == 0
    left_over = list(shard_folder(ws.path, cid, RayConfig()).glob("shard-*.parquet"))
    done_ids = set(ws.store.query_df("SELECT doc_id FROM doc_status")["doc_id"].tolist())
    held = len(set().union(*(shard_docs(p).tolist() for p in left_over)) - done_ids)
    shards = []
    state = embed_with_ray(ws, "c", RayConfig(workers=2, docs_per_batch=6), on_shard=shards.append)
    assert state.status == "done" and ws.corpus("c").n_embedded == 60
    assert sum(s["n_docs"] for s in shards) == 60 - n_done - held  # what this run embedded, each document once
    assert all(s["seconds"] > 0 and s["n_tokens"] > 0 for s in shards)
    got = ws.store.query_df(ROWS_SQL)
    assert_same_rows(got, want, ws.settings.dtype)
    assert len(ws.store.query_df("SELECT doc_id FROM doc_status")) == 60
    ray_dir = shard_folder(ws.path, cid, RayConfig()).parent
    assert not ray_dir.exists(), sorted(ray_dir.rglob("*"))  # nothing left behind in WS.duckdb.ray/
    print(f"killed after {n_done} documents with {len(left_over)} shard(s) written but not ingested")
    ws.close()


LITE_ACTOR = textwrap.dedent("""
    import sys, time
    import numpy as np
    from backend.activations import EmbedConfig
    from backend.engines.ray_engine import EmbedActor
    t0 = time.perf_counter()
    actor = EmbedActor(sys.argv[1], sys.argv[2], sys.argv[3], {"max_tokens": 64}, "float32", 1, sys.argv[4])
    heavy = sorted(m for m in ("sae_lens", "transformer_lens") if m in sys.modules)
    print(len(actor.reader.model.model.layers), type(actor.sae).__name__, ",".join(heavy) or "-")
""")


def test_an_actor_loads_only_the_hf_layers_up_to_the_hook_and_the_saes_encoder(tmp_path, tiny_model_dir, tiny_reader,
                                                                                tiny_sae, tiny_sae_dir, tiny_docs):
    """Actor setup without TransformerLens or sae_lens (what took ~20 s of an actor's start), same rows."""
    from backend.models import hook_layer
    from tests.tiny import HOOK

    # the actor's own process starts first and runs while this one compares the rows
    proc = subprocess.Popen([sys.executable, "-c", LITE_ACTOR, str(tiny_model_dir), str(tiny_sae_dir), HOOK, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    try:
        _same_rows_without_the_heavy_libraries(tiny_model_dir, tiny_reader, tiny_sae, tiny_sae_dir, tiny_docs)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    n_layers, sae_type, heavy = stdout.split()
    assert int(n_layers) == hook_layer(HOOK) + 1 and sae_type == "TopKEncoder" and heavy == "-"


def _same_rows_without_the_heavy_libraries(tiny_model_dir, tiny_reader, tiny_sae, tiny_sae_dir, tiny_docs):
    from backend.activations import EmbedConfig, sae_embed_texts
    from backend.engines.lite import load_embedding_sae, load_truncated_reader
    from backend.runtime import residuals
    from tests.tiny import HOOK

    dtype = str(tiny_reader.model.cfg.dtype).split(".")[-1]
    early = load_truncated_reader(str(tiny_model_dir), "blocks.0.hook_resid_post", dtype=dtype)
    assert len(early.model.model.layers) == 1 < tiny_reader.n_layers  # the layers after the hook's are gone
    ids = torch.tensor([tiny_reader.encode_documents(["the movie was great"])[0].ids])
    assert torch.equal(residuals(early, ids, "blocks.0.hook_resid_post"), residuals(tiny_reader, ids, "blocks.0.hook_resid_post"))
    reader = load_truncated_reader(str(tiny_model_dir), HOOK, dtype=dtype)
    encoder = load_embedding_sae(str(tiny_sae_dir))
    texts, cfg = tiny_docs["text"].tolist(), EmbedConfig(batch_tokens=40, encode_chunk=7)
    want = sae_embed_texts(tiny_reader, tiny_sae, HOOK, texts, cfg)
    got = sae_embed_texts(reader, encoder, HOOK, texts, cfg)
    for name in ("doc", "feature", "argmax_pos", "n_active", "n_tokens"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert np.allclose(got.max_act, want.max_act, atol=1e-6) and np.allclose(got.sum_act, want.sum_act, atol=1e-5)
