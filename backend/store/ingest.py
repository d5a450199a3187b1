"""Getting a corpus into the workspace: its documents (`add_corpus`, `add_corpus_chunks`, atomically or chunk
by chunk), then its sparse feature rows as they are embedded (`write_embeddings`, the Ray engine's shard
ledger), and the reads that drive that resumable loop (`pending_doc_ids`, `export_pending_texts`)
(`IngestMixin`, part of `Store`). Which rows count as present is backend.store.presence and
backend.store.presence_state."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from backend.store import presence
from backend.store.common import StoreError
from backend.store.transaction import Transaction


class IngestMixin:
    """`Store`'s writes of documents and embeddings (see the module docstring)."""

    # -- documents ---------------------------------------------------------
    def add_corpus(self, name: str, df: pd.DataFrame, text_column: str, source: str | None = None) -> int:
        """Store documents (text + metadata); embedding happens later, resumably."""
        return self.add_corpus_chunks(name, [df], text_column, source)

    def add_corpus_chunks(self, name: str, chunks: Iterable[pd.DataFrame], text_column: str,
                          source: str | None = None, commit_each: bool = False) -> int:
        """Store documents that arrive in chunks (a file larger than memory, see backend.streaming).

        One transaction by default: an error in any chunk (or in the iterator that reads them) stores nothing.
        DuckDB holds a transaction's rows in memory, so `commit_each` commits chunk by chunk instead: the
        corpus reads 'failed' ("still being added") until its last chunk is in, an error deletes it, and a
        process killed mid-way leaves it 'failed' with that message. Every chunk must have the first chunk's
        columns; doc ids continue across chunks."""
        name = name.strip()
        if not name:
            raise StoreError("A corpus needs a name.")
        if self.corpus_exists(name):
            raise StoreError(f"A corpus named {name!r} already exists; choose another name or delete it first.")
        cid, n_docs, meta_cols = None, 0, None
        if not commit_each:
            with self.transaction() as tx:
                for df in chunks:
                    cid, meta_cols = self._add_chunk(tx, cid, meta_cols, name, df, text_column, source, n_docs, False)
                    n_docs += len(df)
                return self._finish_corpus(tx, cid, n_docs)
        try:
            for df in chunks:
                with self.transaction() as tx:
                    cid, meta_cols = self._add_chunk(tx, cid, meta_cols, name, df, text_column, source, n_docs, True)
                n_docs += len(df)
            with self.transaction() as tx:
                return self._finish_corpus(tx, cid, n_docs)
        except BaseException:
            if cid is not None:
                self.delete_corpus(cid)
            raise

    def _add_chunk(self, tx: Transaction, cid: int | None, meta_cols: list | None, name: str, df: pd.DataFrame,
                   text_column: str, source: str | None, first_doc_id: int, importing: bool) -> tuple[int, list]:
        """Insert one chunk (creating the corpus row at the first); returns (corpus id, metadata columns)."""
        if cid is None or meta_cols is None:
            if text_column not in df.columns:
                raise StoreError(f"No column {text_column!r}; columns are: {', '.join(map(str, df.columns))}.")
            meta_cols = [c for c in df.columns if c != text_column]
            cid = int(tx.execute("SELECT nextval('corpus_ids')")[0][0])
            status, error = ("failed", f"Still being added from {source}; if this stays, adding was interrupted: "
                                       "delete the corpus and add the file again.") if importing else ("pending", None)
            tx.execute(
                "INSERT INTO corpora (corpus_id, name, source, text_column, meta_columns, n_docs, status, error) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                [cid, name, source, text_column, json.dumps([str(c) for c in meta_cols]), status, error])
        elif list(df.columns) != [text_column, *meta_cols] and set(df.columns) != {text_column, *meta_cols}:
            raise StoreError(f"Rows {first_doc_id + 1:,} onwards have the columns {list(map(str, df.columns))}, "
                             f"not those of the first rows ({[text_column, *map(str, meta_cols)]}).")
        if len(df):
            self._insert_documents(tx, cid, df, text_column, meta_cols, first_doc_id)
        return cid, meta_cols

    @staticmethod
    def _finish_corpus(tx: Transaction, cid: int | None, n_docs: int) -> int:
        if cid is None or n_docs == 0:
            raise StoreError("The corpus has no documents.")
        tx.execute("UPDATE corpora SET n_docs = ?, status = 'pending', error = NULL WHERE corpus_id = ?", [n_docs, cid])
        return cid

    @staticmethod
    def _insert_documents(tx: Transaction, cid: int, df: pd.DataFrame, text_column: str, meta_cols: list,
                          first_doc_id: int) -> None:
        texts = df[text_column]
        if texts.isna().any():
            raise StoreError(f"Column {text_column!r} has {int(texts.isna().sum())} empty value(s) (first at row "
                             f"{first_doc_id + int(np.flatnonzero(texts.isna())[0]) + 1}).")
        meta_df = df[meta_cols]
        doc_ids = np.arange(first_doc_id, first_doc_id + len(df), dtype=np.int32)
        docs = pd.DataFrame(
            {
                "doc_id": doc_ids,
                "text": texts.astype(str).to_numpy(),
                "meta": meta_df.apply(lambda r: json.dumps(r.to_dict(), default=str), axis=1).to_numpy()
                if meta_cols
                else None,
            }
        )
        tx.insert_df("documents", docs, fixed={"corpus_id": cid})
        if meta_cols:
            long_meta = (meta_df.astype(str).where(meta_df.notna(), None).assign(doc_id=doc_ids)
                         .melt(id_vars="doc_id", var_name="key", value_name="value"))
            tx.insert_df("doc_meta", long_meta[["doc_id", "key", "value"]], fixed={"corpus_id": cid})

    def pending_doc_ids(self, corpus: str | int) -> np.ndarray:
        cid = self.corpus_id(corpus)
        rows = self.fetch_numpy(
            """SELECT d.doc_id FROM documents d ANTI JOIN doc_status s ON d.corpus_id = s.corpus_id AND d.doc_id = s.doc_id
               WHERE d.corpus_id = ? ORDER BY d.doc_id""",
            [cid],
        )
        return rows["doc_id"].astype(np.int64)

    # -- embeddings ----------------------------------------------------------
    def write_embeddings(self, corpus_id: int, doc_ids: np.ndarray, rows: presence.RowsLike,
                         shard: str | None = None) -> int:
        """Write one batch's sparse rows and mark its documents done, in one transaction; returns documents written.

        `rows` is an activations.SparseRows whose `doc` indexes `doc_ids`. Only present rows are stored (the
        workspace's presence threshold, backend.store.presence). With `shard` (a Ray engine shard name) the
        shard is recorded in the same transaction; a shard already recorded, and documents already done, are
        skipped, so ingesting a shard twice changes nothing."""
        doc_ids = np.asarray(doc_ids, dtype=np.int32)
        feats, status = self._embedding_rows(doc_ids, rows)
        with self.transaction() as tx:
            if shard is not None:
                if tx.execute("SELECT count(*) FROM ingested_shards WHERE corpus_id = ? AND shard = ?",
                              [int(corpus_id), shard])[0][0]:
                    return 0
                done = {r[0] for r in tx.execute(
                    "SELECT doc_id FROM doc_status WHERE corpus_id = ? AND doc_id = ANY(?::INTEGER[])",
                    [int(corpus_id), doc_ids.tolist()])}
                if done:
                    feats = feats[~feats["doc_id"].isin(done)]
                    status = status[~status["doc_id"].isin(done)]
                tx.execute("INSERT INTO ingested_shards (corpus_id, shard, n_docs) VALUES (?, ?, ?)",
                           [int(corpus_id), shard, len(status)])
            tx.insert_df("doc_features", feats, fixed={"corpus_id": int(corpus_id)})
            tx.insert_df("doc_status", status, fixed={"corpus_id": int(corpus_id)})
        return len(status)

    def _embedding_rows(self, doc_ids: np.ndarray, rows: presence.RowsLike) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The batch's present feature rows (doc_features) and its documents' status rows (doc_status)."""
        threshold, cutoff = self._presence_state()
        if threshold > 0 and cutoff is None:
            raise StoreError("This workspace's presence scales are not calibrated yet; embed through "
                             "backend.jobs.embed_corpus (or call Store.set_presence_scales) first.")
        batch_doc = np.asarray(rows.doc, np.int64)
        acts = np.asarray(rows.max_act, np.float32)
        keep = acts > 0 if cutoff is None else acts >= cutoff[np.asarray(rows.feature, np.int64)]
        n_raw = np.bincount(batch_doc[acts > 0], minlength=len(doc_ids)).astype(np.int32)
        feats = pd.DataFrame(
            {
                "doc_id": doc_ids[batch_doc[keep]],
                "feature_id": np.asarray(rows.feature, np.int32)[keep],
                "max_act": acts[keep],
                "argmax_pos": np.asarray(rows.argmax_pos, np.int32)[keep],
                "n_active": np.asarray(rows.n_active, np.int32)[keep],
            }
        )
        if threshold > 0:
            feats["sum_code"] = presence.encode_sum(feats["max_act"].to_numpy(), feats["n_active"].to_numpy(),
                                                    np.asarray(rows.sum_act)[keep])
        else:
            feats["sum_act"] = np.asarray(rows.sum_act, np.float32)[keep]
        status = pd.DataFrame({"doc_id": doc_ids, "n_tokens": rows.n_tokens, "truncated": rows.truncated,
                               "n_raw_features": n_raw})
        return feats, status

    def ingested_shards(self, corpus_id: int) -> set[str]:
        """Names of the shards already written into the corpus (Ray engine)."""
        return {r[0] for r in self.query_all("SELECT shard FROM ingested_shards WHERE corpus_id = ?", [int(corpus_id)])}

    def export_pending_texts(self, corpus_id: int, folder: str | Path, rows_per_file: int = 10_000,
                             rows_per_group: int | None = None, by_length: bool = False,
                             head: int = 0) -> list[Path]:
        """Write the corpus's not-yet-embedded documents (doc_id, text) as Parquet files in `folder`.

        Streamed from DuckDB in record batches, so a corpus larger than memory exports in bounded memory.
        `rows_per_group` sets the Parquet row groups (what a distributed engine hands one worker at a time).
        `by_length` orders each file's rows longest text first, so a row group holds documents of similar
        length (a padded batch wastes little) and the longest batches start first; the export's first `head`
        documents (by doc id) still come first, in groups of their own as far as `rows_per_group` allows."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        seen = 0
        with self._cursor() as cur:
            reader = cur.sql(
                """SELECT d.doc_id, d.text FROM documents d ANTI JOIN doc_status s
                   ON d.corpus_id = s.corpus_id AND d.doc_id = s.doc_id WHERE d.corpus_id = $cid ORDER BY d.doc_id""",
                params={"cid": int(corpus_id)}).to_arrow_reader(int(rows_per_file))
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                table = pa.Table.from_batches([batch])
                if by_length:
                    n = table.num_rows
                    length = pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
                    in_head = np.arange(seen, seen + n) < int(head)
                    table = table.take(pa.array(np.lexsort((-length.astype(np.int64), ~in_head))))
                seen += table.num_rows
                path = folder / f"part-{len(paths):06d}.parquet"
                pq.write_table(table, path, row_group_size=rows_per_group or table.num_rows)
                paths.append(path)
        return paths

