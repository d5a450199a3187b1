"""The analyses a notebook or a page runs on a workspace, one call each (mixed into `Workspace`).

Pages call exactly these methods, so what a page shows and what a notebook gets cannot drift apart.
Each method loads the corpus's embeddings through the store, then calls the pure functions of
`backend.analysis` (which take sparse matrices and know nothing of workspaces)."""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend.analysis.cluster import DocumentClusters, cluster_along
from backend.analysis.concepts import ConceptConfig
from backend.analysis.diff import DiffConfig, split_by_column
from backend.analysis.findings import DiffResult, diff_result
from backend.analysis.hypotheses import ChatFn, HypothesisConfig, HypothesisReport, run_hypotheses, sample_doc_ids
from backend.analysis.retrieve import dense_retrieve, query_weights, rank_by_query
from backend.errors import UserError

if TYPE_CHECKING:
    from backend.labels import LLMConfig
    from backend.steering import SteerConfig, SteerResult
    from backend.store import Corpus

CorpusRef = "str | int | Corpus"


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
        corpus_a = self.corpus(a)
        if column is not None:
            if b is not None:
                raise UserError("Give either a second corpus or a metadata column to split one corpus, not both.")
            if value_a is None:
                raise UserError(f"Say which value of {column!r} forms group A (value_a=…).")
            X = self.latents(corpus_a, "max")
            meta = pd.DataFrame({column: self.metadata(corpus_a, column).to_numpy()})
            XA, XB, ids_a, ids_b = split_by_column(X, meta, column, value_a, value_b)
            lengths = self.doc_lengths(corpus_a)
            la, lb = lengths[ids_a], lengths[ids_b]
            labels = self.labels(corpus_a)
        else:
            if b is None:
                raise UserError("A diff needs two sides: a second corpus, or column=… to split this one.")
            corpus_b = self.corpus(b)
            XA, XB = self.latents(corpus_a, "max"), self.latents(corpus_b, "max")
            ids_a, ids_b = np.arange(XA.shape[0]), np.arange(XB.shape[0])
            la, lb = self.doc_lengths(corpus_a), self.doc_lengths(corpus_b)
            labels = {**self.labels(corpus_b), **self.labels(corpus_a)}
        if XA.shape[0] == 0 or XB.shape[0] == 0:
            raise UserError("One side of the diff has no documents.")
        return diff_result(XA, XB, la, lb, labels, ids_a=ids_a, ids_b=ids_b, **asdict(cfg), **extra)

    def hypotheses(
        self, result: DiffResult, llm: "LLMConfig | ChatFn", corpus_a: CorpusRef, corpus_b: CorpusRef | None = None,
        config: HypothesisConfig = HypothesisConfig(), name_a: str = "A", name_b: str = "B",
    ) -> HypothesisReport:
        """The paper's last step: 3-5 hypotheses written by an LLM from the diff's top findings and their
        examples, each checked on a sample of A and of B documents (judged by the LLM; sample size shown).

        ``corpus_a``/``corpus_b``: where the two sides' documents live (one corpus for a split by a column).
        ``llm``: an OpenAI-compatible server's ``LLMConfig``, or any ChatFn (e.g. backend.reader_llm.reader_chat)."""
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

    # -- retrieval -------------------------------------------------------------------------------
    def retrieve(self, corpus: CorpusRef, query: str, top: int = 50, weighting: str = "idf") -> pd.DataFrame:
        """The SAE ranking of documents for a text query: doc_id, score, n_overlap (best first).

        The query is read by the reader model and SAE like a document (max-pooled features); documents
        are ranked by cosine over features weighted by inverse document frequency (`weighting="idf"`, so
        features that fire almost everywhere do not drown the rare, topical ones; "none": plain cosine).
        `query_features` shows the weights."""
        handle = self.corpus(corpus)
        ranking = rank_by_query(self.latents(handle, "max"), self.embed_text(query), top=top, weighting=weighting)
        return ranking.table.rename(columns={"row": "doc_id"}).reset_index(drop=True)

    def query_features(self, corpus: CorpusRef, query: str, weighting: str = "idf") -> pd.DataFrame:
        """The query's features with their activation, document frequency, idf and weight in `retrieve`."""
        handle = self.corpus(corpus)
        return query_weights(self.latents(handle, "max"), self.embed_text(query), weighting=weighting)

    def retrieve_dense(self, corpus: CorpusRef, query: str, top: int = 50) -> pd.DataFrame:
        """The MiniLM baseline beside it: doc_id, score (cosine; vectors computed and stored on first use)."""
        from backend.doc_embeddings import doc_vectors, embed_query

        handle = self.corpus(corpus)
        ranking = dense_retrieve(embed_query(query), doc_vectors(self, handle), top=top)
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

    # -- steering --------------------------------------------------------------------------------
    def steer(
        self, prompts: list[str], strengths: dict[int, float | str], config: "SteerConfig | None" = None,
        corpus: CorpusRef | None = None, unit: str = "residual", on_token: Any = None, auto: Any = None,
    ) -> "SteerResult":
        """Generate from `prompts` with and without adding {feature_id: strength} to the residual stream.

        Strength is in `unit`: "residual" (default) adds a vector as long as the median residual at the hook, so
        1.0 is the same push for every feature; "p99_act"/"max_act" (the older units) scale by the feature's
        typical activation in `corpus`. A strength "auto" picks the largest strength whose median perplexity
        stays within 1.5x of unsteered (`auto`: a backend.steering.AutoConfig), reported in `result.auto`.
        Each generation carries its measures: the per-token activation, perplexity under the unsteered model,
        MiniLM similarity to the feature's top contexts, and `fires`: whether the feature fires anywhere in the
        output, max-pooled as documents are judged."""
        from backend.steering.inputs import steer_in_workspace

        return steer_in_workspace(self, prompts, dict(strengths), config, corpus, unit, on_token, auto)  # type: ignore[arg-type]

    def steer_sweep(
        self, feature_id: int, strengths: list[float], prompts: list[str], config: "SteerConfig | None" = None,
        corpus: CorpusRef | None = None, unit: str = "residual", on_progress: Any = None,
    ) -> pd.DataFrame:
        """One feature at several strengths: share of generations where it fires, activation, perplexity."""
        from backend.steering.inputs import sweep_in_workspace

        return sweep_in_workspace(self, int(feature_id), list(strengths), list(prompts), config, corpus, unit,  # type: ignore[arg-type]
                                  on_progress)
