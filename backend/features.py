"""Deprecated module path: the feature browser's backend now lives in two modules by job.

- backend.feature_precompute: what needs the model or a full scan (finalize_corpus, logit lens table);
- backend.feature_queries: the SQL-only queries behind the feature pages.

Everything public is re-exported here so notebooks written against `backend.features` keep working."""
from __future__ import annotations

from backend.feature_precompute import *  # noqa: F401,F403
from backend.feature_precompute import N_BINS, PER_CORPUS_TABLES  # noqa: F401
from backend.feature_queries import *  # noqa: F401,F403
from backend.feature_queries import (  # noqa: F401
    CORRELATED_COLUMNS, DOC_FEATURES, META_CODES, QUANTILE_BUCKETS, SORTABLE, _stored_logits,
)
