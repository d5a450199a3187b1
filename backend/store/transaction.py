"""The writes of one all-or-nothing transaction: `Transaction`, what `Store.transaction()` yields, so a
write names a table and its columns (checked against backend.store.schema) and never holds the raw
connection."""
from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pandas as pd

from backend.store import schema
from backend.store.common import Params, StoreError


class Transaction:
    """The writes of one all-or-nothing transaction (what `Store.transaction()` yields)."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cur = cursor

    def execute(self, sql: str, params: Params = None) -> list[tuple]:
        return self._cur.execute(sql, list(params or [])).fetchall()

    def insert_df(self, table: str, rows: pd.DataFrame, fixed: dict[str, Any] | None = None) -> None:
        """Bulk-insert rows (columns by name) into `table`; `fixed` gives constant columns (e.g. corpus_id)."""
        fixed = fixed or {}
        known = schema.table_columns(table)
        columns = [*fixed, *rows.columns]
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise StoreError(f"Table {table} has no column(s) {unknown}.")
        select = ", ".join(["?"] * len(fixed) + [f'"{c}"' for c in rows.columns])
        self._cur.register("_bulk_rows", rows)
        try:
            self._cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM _bulk_rows",
                              list(fixed.values()))
        finally:
            self._cur.unregister("_bulk_rows")

    def delete_where(self, table: str, where: dict[str, Any]) -> None:
        """DELETE rows matching every `column = value` (None matches NULL; a list matches any of its values)."""
        if table not in schema.TABLES:
            raise StoreError(f"No table {table!r}.")
        clauses, params = [], []
        for col, value in where.items():
            if col not in schema.table_columns(table):
                raise StoreError(f"Table {table} has no column {col!r}.")
            if isinstance(value, (list, tuple, np.ndarray)):
                clauses.append(f"{col} IN (SELECT unnest(?::{_sql_list_type(value)}))")
                params.append([v.item() if isinstance(v, np.generic) else v for v in value])
            else:
                clauses.append(f"{col} IS NOT DISTINCT FROM ?")
                params.append(value.item() if isinstance(value, np.generic) else value)
        self._cur.execute(f"DELETE FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else ""), params)


def _sql_list_type(values: Any) -> str:
    first = next(iter(values), 0)
    return "VARCHAR[]" if isinstance(first, str) else "BIGINT[]"
