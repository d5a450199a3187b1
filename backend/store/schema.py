"""Every table of a workspace file, in one place, with the schema version stamped in `workspace_meta`.

A file made by an older version is upgraded in place when that is safe (tables added, columns added);
a file made by a newer version is refused with a clear message. Concept modules keep their query SQL
(features, labels, search, …) but never create tables: they are all here.

Version history:
    1  (implicit, no stamp) core tables; feature/label/search tables created lazily by their modules
    2  every table created up front; corpora.data_version; schema_version stamped
    3  compact storage: a per-workspace presence threshold (rows under it are not stored; `presence_scales`
       holds each feature's calibrated scale), doc_features.sum_code (the sum of a compact row, coded),
       doc_status.n_raw_features, feature_docs holds each feature's top documents only (not a second full copy),
       feature_hist drops lo/hi (derived from feature_stats.max_act), ingested_shards (the Ray engine's ledger)
    4  feature_search_index: what a (background, chunked) build of the feature-search vectors set out to
       cover and whether it finished (backend.search.feature_index_status); a version-3 file gains the table
"""
from __future__ import annotations

SCHEMA_VERSION = 4
DOC_VECTOR_DIM = 384  # all-MiniLM-L6-v2

TABLES: dict[str, str] = {
    "workspace_meta": "key VARCHAR PRIMARY KEY, value VARCHAR",
    "corpora": """corpus_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, source VARCHAR, text_column VARCHAR,
        meta_columns VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp, n_docs INTEGER,
        status VARCHAR DEFAULT 'pending', error VARCHAR, data_version INTEGER DEFAULT 0""",
    "documents": "corpus_id INTEGER NOT NULL, doc_id INTEGER NOT NULL, text VARCHAR NOT NULL, meta VARCHAR",
    "doc_meta": "corpus_id INTEGER, doc_id INTEGER, key VARCHAR, value VARCHAR",
    "doc_status": "corpus_id INTEGER, doc_id INTEGER, n_tokens INTEGER, truncated BOOLEAN, n_raw_features INTEGER",
    # One row per (document, present feature). sum_act is exact in a raw workspace (presence threshold 0);
    # a compact one stores sum_code instead (see backend.store.presence.SUM_SQL) and sum_act NULL.
    "doc_features": """corpus_id INTEGER, doc_id INTEGER, feature_id INTEGER, max_act FLOAT, argmax_pos INTEGER,
        n_active INTEGER, sum_act FLOAT, sum_code UTINYINT""",
    # each feature's calibrated scale: a row counts as present when max_act >= threshold * scale
    "presence_scales": "feature_id INTEGER, scale FLOAT, n_docs INTEGER",
    # shards of sparse rows (Ray engine) already written into doc_features, in the same transaction
    "ingested_shards": """corpus_id INTEGER, shard VARCHAR, n_docs INTEGER,
        ingested_at TIMESTAMP DEFAULT current_timestamp""",
    # feature browser (backend.feature_precompute writes, backend.feature_queries reads)
    # feature_docs: each feature's strongest documents only (rank < feature_precompute.TOP_DOCS_PER_FEATURE)
    "feature_docs": """corpus_id INTEGER, feature_id INTEGER, rank INTEGER, doc_id INTEGER, max_act FLOAT,
        argmax_pos INTEGER, n_active INTEGER""",
    "feature_stats": """corpus_id INTEGER, feature_id INTEGER, n_docs INTEGER, n_docs_active INTEGER, density DOUBLE,
        max_act FLOAT, mean_act FLOAT, p25_act FLOAT, p50_act FLOAT, p75_act FLOAT, p99_act FLOAT,
        mean_tokens_active FLOAT""",
    "feature_hist": "corpus_id INTEGER, feature_id INTEGER, bin INTEGER, count INTEGER",  # bin width: max_act / n_bins
    "feature_top_tokens": "corpus_id INTEGER, feature_id INTEGER, token VARCHAR, count INTEGER, mean_act FLOAT",
    "feature_contexts": """corpus_id INTEGER, feature_id INTEGER, rank INTEGER, doc_id INTEGER, max_act FLOAT,
        before VARCHAR, token VARCHAR, after VARCHAR""",
    "feature_logits": "feature_id INTEGER, rank INTEGER, token VARCHAR, value FLOAT, kind VARCHAR",
    # labels (backend.labels)
    "feature_labels": """feature_id INTEGER, label VARCHAR, source VARCHAR, score FLOAT, corpus_id INTEGER,
        updated_at TIMESTAMP DEFAULT current_timestamp""",
    # MiniLM vectors (backend.search, backend.doc_embeddings)
    "feature_embeddings": f"""corpus_id INTEGER, feature_id INTEGER, kind VARCHAR, text VARCHAR,
        vec FLOAT[{DOC_VECTOR_DIM}]""",
    "doc_embeddings": f"corpus_id INTEGER, doc_id INTEGER, vec FLOAT[{DOC_VECTOR_DIM}]",
    # one row per corpus: the last feature-search build (n_features it covers when finished, the labels and
    # contexts it was built from; finished_at NULL while it runs or after an interruption)
    "feature_search_index": """corpus_id INTEGER, n_features INTEGER, source VARCHAR,
        started_at TIMESTAMP DEFAULT current_timestamp, finished_at TIMESTAMP""",
}

SEQUENCES = ("CREATE SEQUENCE IF NOT EXISTS corpus_ids START 1",)

# Columns added after a table first shipped: (table, column, type with default). Applied on upgrade.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("corpora", "data_version", "INTEGER DEFAULT 0"),
    ("doc_status", "n_raw_features", "INTEGER"),
    ("doc_features", "sum_code", "UTINYINT"),
)


def create_statements() -> list[str]:
    """CREATE … IF NOT EXISTS for every sequence and table (idempotent)."""
    return [*SEQUENCES, *(f"CREATE TABLE IF NOT EXISTS {name} ({cols})" for name, cols in TABLES.items())]


def upgrade_statements(existing_columns: set[tuple[str, str]]) -> list[str]:
    """ALTER TABLE statements that bring an older file's tables to this version."""
    return [f"ALTER TABLE {t} ADD COLUMN {c} {typ}" for t, c, typ in ADDED_COLUMNS if (t, c) not in existing_columns]


def table_columns(table: str) -> list[str]:
    """Column names of one table, in order (for bulk inserts by name)."""
    if table not in TABLES:
        raise KeyError(table)
    cols = []
    for part in TABLES[table].replace("\n", " ").split(","):
        words = part.split()
        if words and words[0].upper() not in ("PRIMARY", "UNIQUE"):
            cols.append(words[0])
    return cols
