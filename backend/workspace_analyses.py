"""The analyses a notebook or a page runs on a workspace, one call each (mixed into `Workspace`).

Pages call exactly these methods, so what a page shows and what a notebook gets cannot drift apart.
Each method loads the corpus's embeddings through the store, then calls the pure functions of
`backend.analysis` (which take sparse matrices and know nothing of workspaces)."""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from backend.analysis.cluster import ClusterReading, DocumentClusters, cluster_along, cluster_dense_read, read_clusters
from backend.analysis.concepts import ConceptConfig
from backend.analysis.diff import DiffConfig, split_by_column
from backend.analysis.explain import ExplainConfig, ExplainResult, explain_column
from backend.analysis.findings import DiffResult, diff_result
from backend.analysis.hypotheses import ChatFn, HypothesisConfig, HypothesisReport, run_hypotheses, sample_doc_ids
from backend.analysis.retrieve import (
    checked_query, cosine_scores, dense_retrieve, hybrid_ranking, query_scores, query_weights, rank_by_query,
)
from backend.analysis.trend import TrendConfig, TrendResult, trend_result
from backend.dense_baseline import BaselineMode, Progress, baseline_vectors, scaled
from backend.doc_embeddings import doc_vectors, embed_query
from backend.errors import UserError
from backend.label_text import split_label
from backend.steering.inputs import steer_in_workspace, sweep_in_workspace
from backend.finding_labels import label_findings as findings_labelled, require_llm
from backend.finding_quotes import SideSource, quote_sides

if TYPE_CHECKING:
    from backend.llm import LLMConfig
    from backend.steering import SteerConfig, SteerResult
    from backend.store import Corpus

CorpusRef = "str | int | Corpus"
RETRIEVE_MODES = ("sae", "dense", "hybrid")


class _DiffSides(NamedTuple):
    """The two sides of a diff: matrices, doc ids, token lengths, the labels that fold and name findings,
    and where each side's documents are (for quotes from its own side)."""

    XA: Any
    XB: Any
    ids_a: np.ndarray
    ids_b: np.ndarray
    lengths_a: np.ndarray
    lengths_b: np.ndarray
    labels: dict[int, str]
    sources: dict[str, SideSource]


def _doc_ids(reading: ClusterReading) -> ClusterReading:
    """Typical documents named by doc_id, as everywhere on the façade."""
    reading.documents = reading.documents.rename(columns={"row": "doc_id"})
    return reading


class WorkspaceAnalyses:
    """Mixin: needs `corpus()`, `latents()`, `doc_lengths()`, `metadata()`, `labels()` from Workspace."""

    # -- diff ------------------------------------------------------------------------------------
    def diff(
        self, a: CorpusRef, b: CorpusRef | None = None, *, length_control: bool = True, column: str | None = None,
        value_a: Any = None, value_b: Any = None, config: DiffConfig | None = None, **options: Any,
    ) -> DiffResult:
        """Which concepts are more common in A than in B, as a table and as grouped findings.

        Two corpora: ``ws.diff("tweets_android", "tweets_iphone")``. Two groups of one corpus by a
        metadata column: ``ws.diff("reviews", column="label", value_a="fresh", value_b="rotten")``
        (``value_b=None``: every other document). ``length_control`` ranks by the length-adjusted
        difference (Cochran-Mantel-Haenszel over token-length bins) and demotes length-confounded
        features. ``options`` are `DiffConfig` fields (threshold, min_share, max_share, length_bins, …)."""
        fields = DiffConfig.__dataclass_fields__
        cfg = config or DiffConfig(length_control=length_control, **{k: v for k, v in options.items() if k in fields})
        extra = {k: v for k, v in options.items() if k not in fields}
        sides = self._diff_groups(a, b, column, value_a, value_b) if column is not None else self._diff_corpora(a, b)
        result = diff_result(sides.XA, sides.XB, sides.lengths_a, sides.lengths_b, sides.labels, ids_a=sides.ids_a,
                             ids_b=sides.ids_b, **asdict(cfg), **extra)
        return quote_sides(self.store, result, sides.sources)  # each finding quotes a document of its own side

    def _diff_groups(self, a: CorpusRef, b: CorpusRef | None, column: str, value_a: Any, value_b: Any) -> _DiffSides:
        """Group A and B of one corpus by a metadata column: their matrices, row ids, lengths and labels."""
        if b is not None:
            raise UserError("Give either a second corpus or a metadata column to split one corpus, not both.")
        if value_a is None:
            raise UserError(f"Say which value of {column!r} forms group A (value_a=…).")
        corpus = self.corpus(a)
        values = self.metadata(corpus, column).to_numpy()
        XA, XB, ids_a, ids_b = split_by_column(self.latents(corpus, "max"), pd.DataFrame({column: values}), column,
                                               value_a, value_b)
        if XA.shape[0] == 0 or XB.shape[0] == 0:
            seen = pd.Series(values).dropna().astype(str).value_counts().index[:10]
            side = "A" if XA.shape[0] == 0 else "B"
            wanted = repr(value_a) if side == "A" else ("any other value" if value_b is None else repr(value_b))
            also = " that is not in group A" if side == "B" and value_b is not None else ""
            raise UserError(f"Group {side} of the diff has no documents: no document of {corpus.name!r} has "
                            f"{column!r} = {wanted}{also}. Its most common values: {', '.join(repr(v) for v in seen)}.")
        lengths = self.doc_lengths(corpus)
        sources = {"a": SideSource(corpus.corpus_id, ids_a), "b": SideSource(corpus.corpus_id, ids_b)}
        return _DiffSides(XA, XB, ids_a, ids_b, lengths[ids_a], lengths[ids_b], self.labels(corpus), sources)

    def _diff_corpora(self, a: CorpusRef, b: CorpusRef | None) -> _DiffSides:
        """Two corpora's matrices, row ids, lengths and labels (A's labels win where both have one)."""
        if b is None:
            raise UserError("A diff needs two sides: a second corpus, or column=… to split this one.")
        corpus_a, corpus_b = self.corpus(a), self.corpus(b)
        if corpus_a.corpus_id == corpus_b.corpus_id:
            raise UserError(f"Both sides of the diff are corpus {corpus_a.name!r}; give another corpus, or "
                            f"column=… to compare groups of this one.")
        XA, XB = self.latents(corpus_a, "max"), self.latents(corpus_b, "max")
        if XA.shape[0] == 0 or XB.shape[0] == 0:
            raise UserError(f"Corpus {(corpus_a if XA.shape[0] == 0 else corpus_b).name!r} has no embedded documents.")
        labels_a, labels_b = self.labels(corpus_a), self.labels(corpus_b)
        return _DiffSides(XA, XB, np.arange(XA.shape[0]), np.arange(XB.shape[0]), self.doc_lengths(corpus_a),
                          self.doc_lengths(corpus_b), {**labels_b, **labels_a},
                          {"a": SideSource(corpus_a.corpus_id), "b": SideSource(corpus_b.corpus_id, labels=labels_b)})

    def hypotheses(
        self, result: DiffResult, llm: "LLMConfig | ChatFn | None", corpus_a: CorpusRef, corpus_b: CorpusRef | None = None,
        config: HypothesisConfig = HypothesisConfig(), name_a: str = "A", name_b: str = "B",
    ) -> HypothesisReport:
        """The paper's last step: 3-5 hypotheses written by an LLM from the diff's top findings and their
        examples, each checked on a sample of A and of B documents (judged by the LLM; sample size shown).

        ``corpus_a``/``corpus_b``: where the two sides' documents live (one corpus for a split by a column).
        ``llm``: an OpenAI-compatible server's ``LLMConfig``, or any ChatFn (e.g. backend.reader_llm.reader_chat); None:
        the configured one, as for `label_findings` (an LLMError says why when there is none)."""
        llm = require_llm(self, llm, "Hypotheses are written")
        handle_a = self.corpus(corpus_a)
        handle_b = self.corpus(corpus_b) if corpus_b is not None else handle_a
        findings = result.summary(n_per_side=config.n_findings)

        def texts(handle: "Corpus", doc_ids) -> dict[int, str]:
            ids = [int(d) for d in doc_ids]
            return dict(zip(ids, self.store.texts(handle.corpus_id, ids))) if ids else {}

        examples_a = texts(handle_a, {d for f in findings for d in f.examples_a})
        examples_b = texts(handle_b, {d for f in findings for d in f.examples_b})
        docs_a = texts(handle_a, sample_doc_ids(result.ids_a, config.sample_size, config.seed))
        docs_b = texts(handle_b, sample_doc_ids(result.ids_b, config.sample_size, config.seed + 1))
        return run_hypotheses(findings, examples_a, examples_b, docs_a, docs_b, llm, config, name_a, name_b)

    # -- explain a column, trends -----------------------------------------------------------------
    def explain(
        self, corpus: CorpusRef, column: str, *, kind: str = "auto", baseline: BaselineMode = True,
        config: ExplainConfig | None = None, progress: Progress | None = None, **options: Any,
    ) -> ExplainResult:
        """Which concepts go with higher and lower values of a metadata column (or with each of its values),
        chosen on one half of the documents and tested on the other, and the held-out score of an L1 linear
        model on SAE features (``res.score``) beside the same model on MiniLM vectors (``res.baseline``).

        ``baseline``: True computes missing MiniLM vectors, "stored" uses them only when complete, False skips.
        ``progress(fraction, message)``; ``options``: `ExplainConfig` fields (min_docs, test_size, seed, …)."""
        handle = self.corpus(corpus)
        cfg = config or ExplainConfig(**options)
        dense, note = baseline_vectors(self, handle, baseline, scaled(progress, 0.0, 0.5))  # type: ignore[arg-type]
        return explain_column(self.latents(handle, "max"), self.metadata(handle, column), column, self.labels(handle),
                              dense, kind=kind, config=cfg, baseline_note=note,
                              progress=scaled(progress, 0.5 if dense is not None else 0.0, 1.0))

    def trend(
        self, corpus: CorpusRef, column: str, bins: str | int | None = None, *, features: list[int] | None = None,
        kind: str = "auto", config: TrendConfig | None = None, progress: Progress | None = None, **options: Any,
    ) -> TrendResult:
        """How concepts rose and fell along an ordered column (a date, a year, a number): shares per bin with
        Wilson intervals, Cochran-Armitage trends with BH q-values, grouped rising/falling findings.

        ``bins``: None (years or months for dates, by span; quantiles for numbers), "year", "month",
        "quantile" or a number of quantile bins; ``features``: pinned feature ids whose shares are added."""
        handle = self.corpus(corpus)
        cfg = config or TrendConfig(**options)
        return trend_result(self.latents(handle, "max"), self.metadata(handle, column), column, self.labels(handle),
                            bins=bins, features=features, kind=kind, config=cfg, progress=progress)

    def label_findings(
        self, result: DiffResult, corpus_a: CorpusRef, corpus_b: CorpusRef | None = None, *,
        llm: "LLMConfig | ChatFn | None" = None, progress: Any = None, n_per_side: int = 4,
        include_confounded: bool | None = None, **options: Any,
    ) -> pd.DataFrame:
        """The diff summary's findings labelled by an LLM, the offline label beside it: finding, side,
        feature_id (the lead), offline_label, offline_score, llm_label, llm_score, cached.

        ``corpus_a``/``corpus_b`` as for `hypotheses` (B None: a split of one corpus). ``llm``: an LLMConfig or a
        ChatFn; None = the configured one (the operator's server, else an instruct reader of 1B+ parameters).
        ``progress(done, total)`` after each finding. LLM labels are stored and not asked again (``force=True``
        asks again); ``options`` go to `backend.labels.llm_label_features`."""
        findings = result.summary(n_per_side=n_per_side, include_confounded=include_confounded)
        handle_b = self.corpus(corpus_b) if corpus_b is not None else None
        return findings_labelled(self, findings, self.corpus(corpus_a), handle_b, llm=llm, progress=progress,
                                 **options)

    # -- retrieval -------------------------------------------------------------------------------
    def retrieve(self, corpus: CorpusRef, query: str, top: int = 50, weighting: str = "idf", mode: str = "sae",
                 fusion: str = "adaptive") -> pd.DataFrame:
        """Documents for a text query, best first. `mode="sae"` (default): the SAE ranking, doc_id, score, n_overlap.

        The query is read by the reader model and SAE like a document (max-pooled features); documents
        are ranked by cosine over features weighted by inverse document frequency (`weighting="idf"`, so
        features that fire almost everywhere do not drown the rare, topical ones; "none": plain cosine).
        `query_features` shows the weights. `mode="dense"`: `retrieve_dense`. `mode="hybrid"`: both
        rankings fused (`fusion="adaptive"`: standardized scores, each ranking weighted by how clearly its best
        documents stand apart for this query; "zscore": unweighted; "rrf": reciprocal rank fusion), with
        doc_id, score, sae_rank, dense_rank, sae_score, dense_score, and the query's features that make each
        hit relevant (`features`, ids; `why`, their labels and shares of the SAE score)."""
        if mode not in RETRIEVE_MODES:
            raise UserError(f"mode must be one of {', '.join(RETRIEVE_MODES)}, not {mode!r}")
        query = checked_query(query)
        if mode == "dense":
            return self.retrieve_dense(corpus, query, top=top)
        handle = self.corpus(corpus)
        X = self.latents(handle, "max")
        if mode == "sae":
            ranking = rank_by_query(X, self.embed_text(query), top=top, weighting=weighting)
            return ranking.table.rename(columns={"row": "doc_id"}).reset_index(drop=True)
        weights, sae, _ = query_scores(X, self.embed_text(query), weighting)
        query_labels = self.labels(handle, [int(f) for f in weights["feature_id"]])
        names = {f: split_label(text)[0] for f, text in query_labels.items()}
        fused = hybrid_ranking(X, weights, sae, self._dense_scores(handle, query), names, top, fusion)
        return fused.rename(columns={"row": "doc_id"}).reset_index(drop=True)

    def _dense_scores(self, handle: "Corpus", query: str) -> np.ndarray:
        """MiniLM cosine of the query with every document (vectors computed and stored on first use)."""
        return cosine_scores(embed_query(query), self._doc_vectors(handle))

    def query_features(self, corpus: CorpusRef, query: str, weighting: str = "idf") -> pd.DataFrame:
        """The query's features with their activation, document frequency, idf and weight in `retrieve`."""
        handle = self.corpus(corpus)
        return query_weights(self.latents(handle, "max"), self.embed_text(checked_query(query)), weighting=weighting)

    def retrieve_dense(self, corpus: CorpusRef, query: str, top: int = 50) -> pd.DataFrame:
        """The MiniLM baseline beside it: doc_id, score (cosine; vectors computed and stored on first use)."""
        handle = self.corpus(corpus)
        ranking = dense_retrieve(embed_query(checked_query(query)), doc_vectors(self, handle), top=top)
        return ranking.rename(columns={"row": "doc_id"}).reset_index(drop=True)

    # -- clustering ------------------------------------------------------------------------------
    def cluster(
        self, corpus: CorpusRef, feature_ids: list[int], k: int | None = None, method: str = "concepts",
        groups: list[list[int]] | None = None, config: ConceptConfig = ConceptConfig(), seed: int = 0,
        min_cluster_size: int | None = None,
    ) -> DocumentClusters:
        """Cluster documents along the chosen features: per-document labels in document order (-1: none of
        the chosen concepts, an explicit group) and cluster descriptions.

        method "concepts" folds the features into concepts (features that co-fire, or the user's `groups`)
        and groups documents by which concepts they carry; with k=2 along one concept family the clusters
        are "carries it" and "does not". "spectral" / "kmeans" / "hdbscan" cluster the activation patterns
        (`min_cluster_size`: HDBSCAN's, in documents; None = max(15, 5% of the clustered documents))."""
        handle = self.corpus(corpus)
        return cluster_along(self.latents(handle, "max"), [int(f) for f in feature_ids], k=k, method=method,
                             groups=groups, config=config, seed=seed, min_cluster_size=min_cluster_size)

    def cluster_dense(self, corpus: CorpusRef, k: int, method: str = "kmeans", seed: int = 0, top: int = 5,
                      n_docs: int = 3, min_support: int = 5) -> ClusterReading:
        """Topical groups: the MiniLM document vectors clustered (k-means by default; "spectral",
        "agglomerative"), labels 0..k-1 by decreasing size, each cluster read through its most over- and
        under-represented SAE features and its documents nearest the cluster's MiniLM centre (`documents`:
        cluster, rank, doc_id, similarity)."""
        handle = self.corpus(corpus)
        return _doc_ids(cluster_dense_read(self.latents(handle, "max"), self._doc_vectors(handle), k, method=method,
                                           seed=seed, feature_labels=self.labels(handle), top=top, n_docs=n_docs,
                                           min_support=min_support))

    def describe_clusters(self, corpus: CorpusRef, labels: Any, top: int = 5, n_docs: int = 3, min_support: int = 5,
                          typical: str = "sae") -> ClusterReading:
        """Any clustering of the corpus (one label per document, e.g. `ws.cluster(...).labels`) read through
        SAE features: per cluster the most over- and under-represented features (z of the log-odds ratio,
        near-constant features skipped) with labels, and typical documents, nearest the cluster's centre in
        SAE features (`typical="sae"`) or MiniLM vectors ("dense")."""
        if typical not in ("sae", "dense"):
            raise UserError(f"typical must be 'sae' or 'dense', not {typical!r}")
        handle = self.corpus(corpus)
        vectors = self._doc_vectors(handle) if typical == "dense" else None
        return _doc_ids(read_clusters(self.latents(handle, "max"), np.asarray(labels), vectors, self.labels(handle),
                                      method="given", top=top, n_docs=n_docs, min_support=min_support))

    def _doc_vectors(self, handle: "Corpus") -> np.ndarray:
        return doc_vectors(self, handle)

    # -- steering --------------------------------------------------------------------------------
    def steer(
        self, prompts: list[str], strengths: dict[int, float | str], config: "SteerConfig | None" = None,
        corpus: CorpusRef | None = None, unit: str = "residual", on_token: Any = None, auto: Any = None,
    ) -> "SteerResult":
        """Generate from `prompts` with and without adding {feature_id: strength} to the residual stream.

        Strength is in `unit`: "residual" (default) adds a vector as long as the median residual at the hook, so
        1.0 is the same push for every feature; "p99_act"/"max_act" (the older units) scale by the feature's
        typical activation in `corpus`. A strength "auto" picks the largest strength whose median perplexity
        stays within 1.5x of unsteered (`auto`: a backend.steering.AutoConfig), reported in `result.auto`, and
        guides sampling: each steered generation may take, once per feature, one of the model's 32 likeliest tokens
        because the feature fires on it (`Generation.guided`; `SteerConfig.guide`: 0 off, K candidates).
        Each generation carries its measures: the per-token activation, perplexity under the unsteered model,
        MiniLM similarity to the feature's top contexts, and `fires`: whether the feature fires anywhere in the
        output, max-pooled as documents are judged."""
        return steer_in_workspace(self, prompts, dict(strengths), config, corpus, unit, on_token, auto)  # type: ignore[arg-type]

    def steer_sweep(
        self, feature_id: int, strengths: list[float], prompts: list[str], config: "SteerConfig | None" = None,
        corpus: CorpusRef | None = None, unit: str = "residual", on_progress: Any = None,
    ) -> pd.DataFrame:
        """One feature at several strengths: share of generations where it fires, activation, perplexity."""
        return sweep_in_workspace(self, int(feature_id), list(strengths), list(prompts), config, corpus, unit,  # type: ignore[arg-type]
                                  on_progress)
