"""The workspace file's one owner: schema (`schema.py`), connection, locks and transactions (`database.py`,
whose `Store` composes corpora.py, documents.py, ingest.py, presence_state.py and feature_reads.py)."""
from backend.store.database import Corpus, CorpusInfo, Pooling, Store, StoreError, Transaction, WorkspaceLocked
from backend.store.schema import SCHEMA_VERSION

__all__ = ["Corpus", "CorpusInfo", "Pooling", "Store", "StoreError", "Transaction", "WorkspaceLocked", "SCHEMA_VERSION"]
