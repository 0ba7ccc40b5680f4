"""INSERT statements and row encoders for the fast ways in (`sqlite_rows`, `postgres_rows`), which bind values
themselves instead of going through SQLAlchemy: each row encoded as the async engine would have encoded it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal

import orjson
from sqlalchemy import JSON, Boolean, Table

Batch = tuple[Table, Sequence[dict[str, Any]], bool]  # table, rows, whether a row already stored is skipped
Encoder = Callable[[dict[str, Any]], tuple[Any, ...]]


def json_text(value: Any) -> str:
    # As SQLAlchemy's JSON type stores it: None is the JSON text `null` (none_as_null is off), not SQL NULL.
    return orjson.dumps(value).decode()


@cache
def statement(table: Table, replay: bool, dialect: Literal["sqlite", "postgresql"]) -> tuple[str, Encoder]:
    """The INSERT for `table` in `dialect`'s parameter style, and the function turning a row (a dict by column
    name; absent keys take the column's default) into its parameters. `replay` skips a row whose primary key
    is already stored."""
    columns = list(table.columns)
    names = ", ".join(c.name for c in columns)
    marks = ", ".join("?" if dialect == "sqlite" else f"${i}" for i in range(1, len(columns) + 1))
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
    if replay:
        sql += f" ON CONFLICT ({', '.join(c.name for c in table.primary_key)}) DO NOTHING"
    converters: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
    for column in columns:
        default = (
            getattr(column.default, "arg", None) if column.default is not None and column.default.is_scalar else None
        )
        if isinstance(column.type, JSON):
            converters.append((column.name, None, json_text))  # JSONB takes its text on PostgreSQL too
        elif isinstance(column.type, Boolean) and dialect == "sqlite":
            converters.append((column.name, default, lambda v: None if v is None else int(bool(v))))
        else:
            converters.append((column.name, default, None))

    def encode(row: dict[str, Any]) -> tuple[Any, ...]:
        values = []
        for name, default, convert in converters:
            value = row.get(name, default)
            values.append(convert(value) if convert is not None else value)
        return tuple(values)

    return sql, encode
