"""JSON columns declared TEXT on SQLite, so that every value reads back as it was written.

SQLite gave the columns declared JSON NUMERIC affinity: the JSON text of a bare number was stored as an INTEGER
or REAL (`1.0` became 1, an integer beyond 64 bits a rounded REAL), which the JSON reader then failed on. Each
table is rebuilt with TEXT columns (batch mode; foreign keys are off meanwhile, see `db._migrate_sqlite`), and
the numbers already stored that way are written back as their JSON text. PostgreSQL keeps JSONB: nothing to do.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# table -> (primary key columns, JSON columns)
JSON_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "logs": (("id",), ("req_payload", "resp_payload", "meta", "tags")),
    "dataset_entries": (
        ("id",),
        ("messages", "rejected_message", "tools", "tool_choice", "response_format", "meta"),
    ),
    "cache_entries": (("project", "key"), ("completion",)),
    "criteria": (("id",), ("judge_settings",)),
}


def upgrade() -> None:
    _retype(sa.Text())


def downgrade() -> None:
    _retype(sa.JSON())


def _retype(new_type: sa.types.TypeEngine[Any]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, (keys, columns) in JSON_COLUMNS.items():
        numbers = _stored_numbers(bind, table, keys, columns)
        with op.batch_alter_table(table, recreate="always") as batch:
            for column in columns:
                batch.alter_column(column, type_=new_type)
        for column, key, value in numbers:
            where = " AND ".join(f"{name} = :k{i}" for i, name in enumerate(keys))
            params = {f"k{i}": part for i, part in enumerate(key)} | {"v": orjson.dumps(value).decode()}
            bind.execute(sa.text(f"UPDATE {table} SET {column} = :v WHERE {where}"), params)


def _stored_numbers(
    bind: sa.Connection, table: str, keys: tuple[str, ...], columns: tuple[str, ...]
) -> list[tuple[str, tuple[Any, ...], int | float]]:
    """The values SQLite holds as numbers: copying them into a TEXT column would keep 15 digits of a REAL."""
    found: list[tuple[str, tuple[Any, ...], int | float]] = []
    for column in columns:
        query = f"SELECT {', '.join(keys)}, {column} FROM {table} WHERE typeof({column}) IN ('integer', 'real')"
        for row in bind.execute(sa.text(query)):
            found.append((column, tuple(row[: len(keys)]), row[len(keys)]))
    return found
