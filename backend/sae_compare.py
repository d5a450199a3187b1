"""Two SAEs side by side: for a feature of SAE A, its nearest features in SAE B.

Two views of "the same concept", because each can mislead alone:
- **decoder cosine**: the directions the features write into the residual stream (needs the same d_in);
  it says nothing about *when* a feature fires.
- **co-firing**: the Jaccard overlap of the documents each feature fires on, from two documents x features
  matrices of *one corpus in one document order* (the same corpus embedded in two workspaces). It says
  nothing about direction, and features that fire on few documents can tie.

A feature-permuted copy of an SAE finds every twin at cosine 1 and Jaccard 1 (tested).

`compare_across_workspaces(ws_a, ws_b, feature_id, corpus_name)` is the one call behind the "Compare SAEs"
page: two workspaces on one reader model, one SAE each, and optionally one corpus embedded in both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from backend.analysis import as_csr, binarize
from backend.errors import UserError
from backend.saes import same_model

if TYPE_CHECKING:
    from backend.workspace import Workspace


class SAECompareError(UserError):
    """The two SAEs or embeddings cannot be compared as asked."""


@dataclass(frozen=True)
class MatchTable:
    """For every feature of A: its best match in B by decoder cosine and by co-firing."""

    table: pd.DataFrame  # feature_a, cosine_match, cosine, cofire_match, jaccard, n_docs_a

    def agreement(self) -> float:
        """Share of A's firing features whose two best matches are the same B feature."""
        firing = self.table[self.table["n_docs_a"] > 0]
        return float((firing["cosine_match"] == firing["cofire_match"]).mean()) if len(firing) else 0.0


def decoder_directions(sae_or_decoder: torch.nn.Module | torch.Tensor | np.ndarray) -> np.ndarray:
    """Unit-norm decoder rows [d_sae, d_in] (float32) of an SAE (its W_dec) or of a given matrix."""
    weights = getattr(sae_or_decoder, "W_dec", sae_or_decoder)
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().float().cpu().numpy()
    dec = np.asarray(weights, dtype=np.float32)
    if dec.ndim != 2:
        raise SAECompareError(f"A decoder is a 2-D [d_sae, d_in] matrix, not shape {dec.shape}.")
    return dec / np.maximum(np.linalg.norm(dec, axis=1, keepdims=True), 1e-12)


def _check_decoders(dec_a: np.ndarray, dec_b: np.ndarray) -> None:
    if dec_a.shape[1] != dec_b.shape[1]:
        raise SAECompareError(
            f"Decoder cosine needs SAEs on the same residual width (d_in {dec_a.shape[1]} vs {dec_b.shape[1]})."
        )


def _check_embeddings(X_a: sp.spmatrix, X_b: sp.spmatrix) -> None:
    if X_a.shape[0] != X_b.shape[0]:
        raise SAECompareError(
            f"Co-firing needs the same documents in the same order ({X_a.shape[0]} vs {X_b.shape[0]} rows)."
        )


def _top(scores: np.ndarray, top: int) -> np.ndarray:
    """Indices of the `top` highest scores, best first; ties go to the lower feature id."""
    top = min(top, scores.size)
    part = np.argpartition(-scores, top - 1)[:top] if top < scores.size else np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


def nearest_by_decoder(dec_a: np.ndarray, dec_b: np.ndarray, feature_id: int, top: int = 10) -> pd.DataFrame:
    """B's features nearest to A's `feature_id` by decoder cosine. Columns: feature_id, cosine."""
    _check_decoders(dec_a, dec_b)
    cos = dec_b @ dec_a[int(feature_id)]
    idx = _top(cos, top)
    return pd.DataFrame({"feature_id": idx.astype(np.int64), "cosine": cos[idx].astype(np.float64)})


def _jaccard_rows(B_a: sp.csr_matrix, B_b: sp.csr_matrix, features_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Jaccard [len(features_a), F_b], documents per A feature) of the binary document sets."""
    cols = B_a[:, features_a].T.tocsr()  # F x n
    inter = (cols @ B_b).toarray().astype(np.float64)  # F x F_b
    n_a = np.asarray(cols.sum(1)).ravel().astype(np.float64)
    n_b = np.asarray(B_b.sum(0)).ravel().astype(np.float64)
    union = n_a[:, None] + n_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0), n_a


def nearest_by_cofiring(X_a: sp.spmatrix, X_b: sp.spmatrix, feature_id: int, top: int = 10,
                        threshold: float = 0.0) -> pd.DataFrame:
    """B's features that fire on the same documents as A's `feature_id` (Jaccard of document sets).

    X_a, X_b: documents x features matrices of one corpus in one document order. A feature fires in a
    document when its pooled activation exceeds `threshold`. Columns: feature_id, jaccard, n_both."""
    X_a, X_b = as_csr(X_a), as_csr(X_b)
    _check_embeddings(X_a, X_b)
    B_a, B_b = binarize(X_a, threshold), binarize(X_b, threshold)
    jac, _ = _jaccard_rows(B_a, B_b, np.array([int(feature_id)]))
    inter = np.asarray((B_a[:, [int(feature_id)]].T @ B_b).todense()).ravel()
    idx = _top(jac[0], top)
    return pd.DataFrame({"feature_id": idx.astype(np.int64), "jaccard": jac[0, idx], "n_both": inter[idx].astype(np.int64)})


def compare_feature(dec_a: np.ndarray, dec_b: np.ndarray, feature_id: int, X_a: sp.spmatrix | None = None,
                    X_b: sp.spmatrix | None = None, top: int = 10, threshold: float = 0.0) -> pd.DataFrame:
    """The union of B's nearest features by decoder cosine and (with embeddings) by co-firing, with both
    scores for each. Columns: feature_id, cosine, jaccard (NaN without embeddings), best first by cosine."""
    by_cos = nearest_by_decoder(dec_a, dec_b, feature_id, top)
    ids = by_cos["feature_id"].to_numpy()
    jaccard = np.full(len(ids), np.nan)
    if X_a is not None and X_b is not None:
        by_cofire = nearest_by_cofiring(X_a, X_b, feature_id, top, threshold)
        ids = np.unique(np.concatenate([ids, by_cofire["feature_id"].to_numpy()]))
        B_a, B_b = binarize(as_csr(X_a), threshold), binarize(as_csr(X_b), threshold)
        jac, _ = _jaccard_rows(B_a, B_b[:, ids].tocsr(), np.array([int(feature_id)]))
        jaccard = jac[0]
    cos = dec_b[ids] @ dec_a[int(feature_id)]
    out = pd.DataFrame({"feature_id": ids.astype(np.int64), "cosine": cos.astype(np.float64), "jaccard": jaccard})
    return out.sort_values(["cosine", "feature_id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def match_features(dec_a: np.ndarray, dec_b: np.ndarray, X_a: sp.spmatrix | None = None,
                   X_b: sp.spmatrix | None = None, threshold: float = 0.0, block: int = 1024) -> MatchTable:
    """Best match in B for every feature of A, by decoder cosine and (with embeddings) by co-firing.

    Computed in blocks of A's features so two 16k-feature SAEs need no 16k x 16k matrix at once."""
    _check_decoders(dec_a, dec_b)
    n_a = dec_a.shape[0]
    cos_match = np.zeros(n_a, np.int64)
    cos_best = np.zeros(n_a)
    cofire_match = np.full(n_a, -1, np.int64)
    jac_best = np.zeros(n_a)
    n_docs = np.zeros(n_a, np.int64)
    if X_a is not None and X_b is not None:
        X_a, X_b = as_csr(X_a), as_csr(X_b)
        _check_embeddings(X_a, X_b)
        B_a, B_b = binarize(X_a, threshold), binarize(X_b, threshold)
    for start in range(0, n_a, block):
        feats = np.arange(start, min(n_a, start + block))
        cos = dec_a[feats] @ dec_b.T
        cos_match[feats] = cos.argmax(1)  # argmax takes the lowest id among ties
        cos_best[feats] = cos.max(1)
        if X_a is not None and X_b is not None:
            jac, docs = _jaccard_rows(B_a, B_b, feats)
            cofire_match[feats] = np.where(docs > 0, jac.argmax(1), -1)
            jac_best[feats] = jac.max(1)
            n_docs[feats] = docs.astype(np.int64)
    table = pd.DataFrame({"feature_a": np.arange(n_a), "cosine_match": cos_match, "cosine": cos_best,
                          "cofire_match": cofire_match, "jaccard": jac_best, "n_docs_a": n_docs})
    return MatchTable(table)


# -- two workspaces: the page's and a notebook's one call ------------------------------------------------
@dataclass(frozen=True)
class FeatureComparison:
    """A feature of workspace A's SAE and its nearest features in workspace B's SAE, best first.

    Both tables have feature_id, cosine, jaccard, n_both, label (B's), example (a document where the B
    feature fires most, or None); jaccard and n_both are NaN/0 without a corpus. `by_cofiring` keeps only
    features sharing at least one document and is empty without a corpus."""

    feature_id: int
    label_a: str | None
    corpus: str | None  # the corpus co-firing was measured on
    n_docs_a: int  # documents of that corpus where A's feature fires (0 without a corpus)
    by_decoder: pd.DataFrame
    by_cofiring: pd.DataFrame


def check_comparable(ws_a: Workspace, ws_b: Workspace) -> None:
    """Refuse two workspaces whose SAEs read different reader models (their features cannot be compared)."""
    model_a, model_b = ws_a.settings.model, ws_b.settings.model
    if not same_model(model_a, model_b):
        raise SAECompareError(
            f"The two workspaces read different models ({model_a!r} and {model_b!r}); comparing SAEs needs two "
            "workspaces on the same reader model."
        )


def shared_corpora(ws_a: Workspace, ws_b: Workspace) -> list[str]:
    """Names of the corpora embedded in both workspaces (A's order)."""
    in_b = {c.name for c in ws_b.corpus_list() if c.n_embedded > 0}
    return [c.name for c in ws_a.corpus_list() if c.n_embedded > 0 and c.name in in_b]


_FINGERPRINT_SQL = "SELECT count(*), bit_xor(hash(doc_id, text)) FROM documents WHERE corpus_id = ?"


def _check_same_documents(ws_a: Workspace, ws_b: Workspace, name: str) -> None:
    """Co-firing compares document sets row by row: the corpus must hold the same texts in the same order in
    both workspaces, fully embedded."""
    for ws in (ws_a, ws_b):
        if not ws.has_corpus(name):
            raise SAECompareError(f"Workspace {ws.path.stem!r} has no corpus named {name!r}; add the same file to both.")
        corpus = ws.corpus(name)
        if corpus.n_embedded < corpus.n_docs:
            raise SAECompareError(f"Corpus {name!r} is embedded for {corpus.n_embedded:,} of {corpus.n_docs:,} "
                                  f"documents in workspace {ws.path.stem!r}; embed it fully first.")
    prints = [ws.store.query_one(_FINGERPRINT_SQL, [ws.corpus(name).corpus_id]) for ws in (ws_a, ws_b)]
    if tuple(prints[0]) != tuple(prints[1]):
        raise SAECompareError(
            f"Corpus {name!r} holds different documents in the two workspaces ({prints[0][0]:,} and {prints[1][0]:,}); "
            "co-firing needs the same file added to both."
        )


def _examples(ws: Workspace, corpus: str | None, feature_ids: np.ndarray) -> list[str | None]:
    if corpus is None:
        return [None] * len(feature_ids)
    out: list[str | None] = []
    for fid in feature_ids:
        top = ws.top_documents(corpus, int(fid), n=1)
        out.append(str(top["text"].iloc[0]) if len(top) else None)
    return out


def _describe(ws_b: Workspace, corpus_b: str | None, table: pd.DataFrame) -> pd.DataFrame:
    ids = table["feature_id"].to_numpy()
    labels = ws_b.labels(corpus_b, feature_ids=[int(i) for i in ids]) if len(ids) else {}
    table = table.copy()
    table["label"] = [labels.get(int(i)) for i in ids]
    table["example"] = _examples(ws_b, corpus_b, ids)
    return table


def compare_across_workspaces(ws_a: Workspace, ws_b: Workspace, feature_id: int, corpus_name: str | None = None,
                              top: int = 10) -> FeatureComparison:
    """For `feature_id` of A's SAE: B's nearest features by decoder cosine and, with `corpus_name` (one corpus
    embedded in both workspaces), by co-firing (Jaccard of the documents each fires on), with B's labels and
    one example document each. Refuses two reader models, a feature A's SAE lacks, or a corpus that differs."""
    check_comparable(ws_a, ws_b)
    feature_id = int(feature_id)
    if not 0 <= feature_id < ws_a.d_sae:
        raise SAECompareError(f"Feature {feature_id} is not in A's SAE (features 0 to {ws_a.d_sae - 1}).")
    top = max(1, int(top))
    dec_a, dec_b = decoder_directions(ws_a.sae), decoder_directions(ws_b.sae)
    by_decoder = nearest_by_decoder(dec_a, dec_b, feature_id, top)
    by_decoder["jaccard"], by_decoder["n_both"] = np.nan, 0
    by_cofiring = pd.DataFrame({"feature_id": pd.Series(dtype=np.int64), "cosine": pd.Series(dtype=float),
                                "jaccard": pd.Series(dtype=float), "n_both": pd.Series(dtype=np.int64)})
    n_docs_a = 0
    example_corpus = corpus_name
    if corpus_name is not None:
        _check_same_documents(ws_a, ws_b, corpus_name)
        X_a, X_b = ws_a.latents(corpus_name), ws_b.latents(corpus_name)
        n_docs_a = int(X_a[:, feature_id].count_nonzero())
        every = nearest_by_cofiring(X_a, X_b, feature_id, top=int(X_b.shape[1])).set_index("feature_id")
        by_decoder["jaccard"] = every.loc[by_decoder["feature_id"], "jaccard"].to_numpy()
        by_decoder["n_both"] = every.loc[by_decoder["feature_id"], "n_both"].to_numpy()
        near = every[every["jaccard"] > 0].head(top).reset_index()
        near["cosine"] = (dec_b[near["feature_id"].to_numpy()] @ dec_a[feature_id]).astype(np.float64)
        by_cofiring = near[["feature_id", "cosine", "jaccard", "n_both"]]
    else:
        example_corpus = next((c.name for c in ws_b.corpus_list() if c.n_embedded > 0), None)
    label_a = ws_a.labels(corpus_name, feature_ids=[feature_id]).get(feature_id)
    columns = ["feature_id", "cosine", "jaccard", "n_both"]
    return FeatureComparison(
        feature_id=feature_id, label_a=label_a, corpus=corpus_name, n_docs_a=n_docs_a,
        by_decoder=_describe(ws_b, example_corpus, by_decoder[columns]),
        by_cofiring=_describe(ws_b, example_corpus, by_cofiring[columns].reset_index(drop=True)),
    )
