"""Logs, datasets with their entries, and the response cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "logs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project", sa.String(100), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("completion_id", sa.String(100), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("requested_at", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=True),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("req_payload", Json, nullable=True),
        sa.Column("resp_payload", Json, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("cost", sa.Float, nullable=True),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("meta", Json, nullable=False),
        sa.Column("tags", Json, nullable=False),
    )
    op.create_index("ix_logs_completion_id", "logs", ["completion_id"])
    op.create_index("ix_logs_project_time", "logs", ["project", "requested_at", "id"])
    op.create_index("ix_logs_project_model", "logs", ["project", "model"])

    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_datasets_project", "datasets", ["project"])

    op.create_table(
        "dataset_entries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("split", sa.String(5), nullable=False),
        sa.Column("messages", Json, nullable=False),
        sa.Column("rejected_message", Json, nullable=True),
        sa.Column("tools", Json, nullable=True),
        sa.Column("tool_choice", Json, nullable=True),
        sa.Column("response_format", Json, nullable=True),
        sa.Column("meta", Json, nullable=True),
        sa.Column("log_id", sa.String(40), nullable=True),
    )
    op.create_index("ix_dataset_entries_dataset", "dataset_entries", ["dataset_id", "created_at", "id"])

    op.create_table(
        "cache_entries",
        sa.Column("project", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("completion", Json, nullable=False),
    )
    op.create_index("ix_cache_entries_expires_at", "cache_entries", ["expires_at"])


def downgrade() -> None:
    op.drop_table("cache_entries")
    op.drop_table("dataset_entries")
    op.drop_table("datasets")
    op.drop_table("logs")
