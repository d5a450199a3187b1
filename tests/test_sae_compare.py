"""SAEs side by side: a feature-permuted copy of an SAE finds every twin (decoder cosine 1, Jaccard 1)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from backend.sae_compare import (
    SAECompareError,
    compare_across_workspaces,
    compare_feature,
    decoder_directions,
    match_features,
    nearest_by_cofiring,
    nearest_by_decoder,
)
from tests.conftest import TINY_DOCS
from tests.tiny import HOOK, make_tiny_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reader32(tiny_model_dir):
    """The tiny reader in float32 on every CPU: these tests plant twins whose activations must be equal, and a bf16
    encode (native bf16 CPUs, `backend/encode_dtype.py`) may round a permuted column differently and flip a near-tie
    at the top k (what bf16 does to features is bench/dtype_agreement.py's)."""
    from backend.models import load_reader

    return load_reader(str(tiny_model_dir), device="cpu", dtype="float32")


def permuted(sae, perm: np.ndarray):
    """A copy of a TopK SAE whose feature j is the original's feature perm[j]."""
    twin = make_tiny_sae(sae.cfg.metadata.model_name, d_sae=sae.cfg.d_sae, k=sae.cfg.k)
    p = torch.as_tensor(perm)
    with torch.no_grad():
        twin.W_dec.copy_(sae.W_dec[p])
        twin.W_enc.copy_(sae.W_enc[:, p])
        twin.b_enc.copy_(sae.b_enc[p])
        twin.b_dec.copy_(sae.b_dec)
    return twin


def twin_workspaces(folder, reader, sae, perm: np.ndarray, docs: pd.DataFrame):
    """Workspaces A (the SAE) and B (its feature-permuted copy) on one reader, corpus 'c' embedded in both."""
    from backend.workspace import Workspace, WorkspaceSpec

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, this_sae in (("a", sae), ("b", permuted(sae, perm))):
        this_sae.save_model(folder / f"sae_{name}")
        ws = Workspace.create(folder / f"{name}.duckdb", WorkspaceSpec(model=reader.name, sae=str(folder / f"sae_{name}"),
                                                                       presence_threshold=0.0, dtype="float32"),
                              device="cpu", reader=reader, sae=this_sae)
        ws.add_corpus("c", docs, "text")
        ws.embed("c")
        out.append(ws)
    return out


def embed(reader, sae, texts: list[str]) -> sp.csr_matrix:
    from backend.activations import EmbedConfig, embed_texts

    rows = embed_texts(reader, sae, HOOK, texts, EmbedConfig())
    return sp.csr_matrix((rows.max_act, (rows.doc, rows.feature)), shape=(len(texts), int(sae.cfg.d_sae)))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    words = TINY_DOCS["text"].str.split().explode().unique().tolist()
    rng = np.random.default_rng(0)
    extra = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(150)]
    return TINY_DOCS["text"].tolist() + extra


def test_permuted_sae_finds_every_twin(reader32, tiny_sae, corpus):
    perm = np.random.default_rng(1).permutation(tiny_sae.cfg.d_sae)
    twin_of = np.argsort(perm)  # A's feature f is B's feature twin_of[f]
    sae_b = permuted(tiny_sae, perm)
    X_a, X_b = embed(reader32, tiny_sae, corpus), embed(reader32, sae_b, corpus)
    dec_a, dec_b = decoder_directions(tiny_sae), decoder_directions(sae_b)

    table = match_features(dec_a, dec_b, X_a, X_b).table
    assert (table["cosine_match"].to_numpy() == twin_of).all()
    assert np.allclose(table["cosine"], 1.0, atol=1e-5)
    firing = table["n_docs_a"].to_numpy() > 0
    assert firing.sum() >= 16  # the corpus exercises a good share of the features
    assert np.allclose(table.loc[firing, "jaccard"], 1.0)
    for f in np.flatnonzero(firing):  # the twin is among the best co-firing matches (ties share a document set)
        near = nearest_by_cofiring(X_a, X_b, int(f), top=tiny_sae.cfg.d_sae)
        assert near.set_index("feature_id").loc[twin_of[f], "jaccard"] == pytest.approx(1.0)
        assert near["jaccard"].iloc[0] == pytest.approx(1.0)
        both = compare_feature(dec_a, dec_b, int(f), X_a, X_b, top=3).iloc[0]
        assert both["feature_id"] == twin_of[f] and both["cosine"] == pytest.approx(1.0, abs=1e-5)
        assert both["jaccard"] == pytest.approx(1.0)

    # an unrelated SAE (other seed) has no twins: the match is what the permutation planted
    other = make_tiny_sae(reader32.name, seed=7)
    unrelated = match_features(dec_a, decoder_directions(other), X_a, embed(reader32, other, corpus)).table
    assert unrelated["cosine"].max() < 0.99
    assert (unrelated.loc[firing, "jaccard"] < 1.0).mean() > 0.5


def test_cofiring_twin_is_unique_when_document_sets_are():
    rng = np.random.default_rng(0)
    X_a = sp.random(400, 96, density=0.08, format="csr", random_state=1, data_rvs=lambda n: rng.random(n) + 0.1)
    assert len({tuple(X_a[:, f].nonzero()[0]) for f in range(96)}) == 96  # every feature has its own documents
    perm = rng.permutation(96)
    X_b = X_a[:, perm].tocsr()
    table = match_features(decoder_directions(np.eye(96)), decoder_directions(np.eye(96)[perm]), X_a, X_b).table
    assert (table["cofire_match"].to_numpy() == np.argsort(perm)).all()
    assert np.allclose(table["jaccard"], 1.0)
    # a half-overlapping feature scores its Jaccard, not 1
    X_c = X_a.tolil()
    docs = X_a[:, 0].nonzero()[0]
    X_c[docs[: len(docs) // 2], 0] = 0
    near = nearest_by_cofiring(X_a, X_c.tocsr(), 0, top=1)
    assert near["feature_id"].iloc[0] == 0
    assert near["jaccard"].iloc[0] == pytest.approx((len(docs) - len(docs) // 2) / len(docs))


def test_decoder_neighbours_rank_by_cosine():
    dec_a = decoder_directions(np.array([[1.0, 0.0, 0.0]]))
    dec_b = decoder_directions(np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.1, 0.0], [-1.0, 0.0, 0.0]]))
    near = nearest_by_decoder(dec_a, dec_b, 0, top=3)
    assert near["feature_id"].tolist() == [2, 1, 0]
    assert near["cosine"].iloc[1] == pytest.approx(1 / np.sqrt(2))


def test_mismatched_inputs_are_refused():
    with pytest.raises(SAECompareError, match="same residual width"):
        match_features(decoder_directions(np.eye(4)), decoder_directions(np.eye(5)))
    X = sp.random(10, 4, density=0.5, format="csr", random_state=0)
    with pytest.raises(SAECompareError, match="same documents"):
        nearest_by_cofiring(X, X[:9], 0)


def test_shipped_saes_match_their_registry_entries():
    import json

    from backend.config import SHIPPED_SAES, shipped_saes

    present = shipped_saes()
    assert [s.key for s in present][:1] == ["lexical"]  # the default comes first
    for entry in present:
        cfg = json.loads((entry.folder / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == entry.hook and cfg["metadata"]["model_name"] == entry.model
        assert (entry.folder / "sae_weights.safetensors").stat().st_size <= 25 * 2**20  # the repository's limit
        report = json.loads((entry.folder / "training_report.json").read_text())["report"]
        assert report == cfg["metadata"]["saedash_report"]
    assert set(SHIPPED_SAES) >= {s.key for s in present}


def test_workspace_comparison_finds_every_twin_first(reader32, tiny_sae, corpus, tmp_path):
    perm = np.random.default_rng(2).permutation(tiny_sae.cfg.d_sae)
    twin_of = np.argsort(perm)
    ws_a, ws_b = twin_workspaces(tmp_path, reader32, tiny_sae, perm, pd.DataFrame({"text": corpus}))
    try:
        B_a = ws_a.latents("c").tocsc()
        doc_sets = [tuple(B_a[:, f].nonzero()[0]) for f in range(ws_a.d_sae)]
        firing = [f for f in range(ws_a.d_sae) if doc_sets[f]]
        assert len(firing) >= 16
        labels_b = ws_b.labels("c")
        for f in range(ws_a.d_sae):
            result = compare_across_workspaces(ws_a, ws_b, f, corpus_name="c", top=5)
            first = result.by_decoder.iloc[0]
            assert first["feature_id"] == twin_of[f] and first["cosine"] == pytest.approx(1.0, abs=1e-5)
            assert result.by_decoder["cosine"].iloc[1] < 0.99  # the twin alone, not a near-duplicate
            label = first["label"] if isinstance(first["label"], str) else None
            assert label == labels_b.get(int(twin_of[f]))  # B's label of the twin
            assert result.n_docs_a == len(doc_sets[f])
            if not doc_sets[f]:
                assert result.by_cofiring.empty  # no shared document: no co-firing neighbour
                continue
            assert first["jaccard"] == pytest.approx(1.0) and first["n_both"] == len(doc_sets[f])
            top_cofire = result.by_cofiring.iloc[0]
            assert top_cofire["jaccard"] == pytest.approx(1.0)
            if doc_sets.count(doc_sets[f]) == 1:  # a document set of its own: the twin is first, uniquely
                assert top_cofire["feature_id"] == twin_of[f]
                assert result.by_cofiring["jaccard"].iloc[1:].max() < 1.0
                best_doc = ws_b.top_documents("c", int(twin_of[f]), n=1)["text"].iloc[0]
                assert top_cofire["example"] == best_doc
            else:  # features with one document set tie at Jaccard 1; the twin is among them
                assert twin_of[f] in set(result.by_cofiring.loc[result.by_cofiring["jaccard"] == 1.0, "feature_id"])
        assert sum(doc_sets.count(doc_sets[f]) == 1 for f in firing) >= 8  # the unique-first branch ran
        assert sum(isinstance(lab, str) for lab in labels_b.values()) >= 8  # labels were there to attach

        without_corpus = compare_across_workspaces(ws_a, ws_b, firing[0], top=3)
        assert without_corpus.by_decoder["feature_id"].iloc[0] == twin_of[firing[0]]
        assert without_corpus.by_decoder["jaccard"].isna().all() and without_corpus.by_cofiring.empty
    finally:
        ws_a.close()
        ws_b.close()


def test_workspace_comparison_refuses_what_it_cannot_compare(reader32, tiny_sae, corpus, tmp_path, monkeypatch):
    perm = np.arange(tiny_sae.cfg.d_sae)
    ws_a, ws_b = twin_workspaces(tmp_path, reader32, tiny_sae, perm, pd.DataFrame({"text": corpus}))
    try:
        with pytest.raises(SAECompareError, match="not in A's SAE"):
            compare_across_workspaces(ws_a, ws_b, tiny_sae.cfg.d_sae, corpus_name="c")
        with pytest.raises(SAECompareError, match="no corpus named 'nope'"):
            compare_across_workspaces(ws_a, ws_b, 0, corpus_name="nope")
        ws_b.add_corpus("d", pd.DataFrame({"text": corpus[:-1] + ["hello world ."]}), "text")
        ws_b.embed("d")
        ws_a.add_corpus("d", pd.DataFrame({"text": corpus}), "text")
        ws_a.embed("d")
        with pytest.raises(SAECompareError, match="different documents"):
            compare_across_workspaces(ws_a, ws_b, 0, corpus_name="d")
        assert compare_across_workspaces(ws_a, ws_b, 0, corpus_name="c").by_decoder["feature_id"].iloc[0] == 0
        from dataclasses import replace

        monkeypatch.setattr(ws_b, "settings", replace(ws_b.settings, model="gemma-3-270m"))
        with pytest.raises(SAECompareError, match="different models"):
            compare_across_workspaces(ws_a, ws_b, 0)
    finally:
        ws_a.close()
        ws_b.close()
