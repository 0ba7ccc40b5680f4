"""Models trained here (`POST /models`): the training job, then the served `openpipe:<slug>` model.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# JSON columns are TEXT on SQLite since 0003 (every value reads back as written), JSONB on PostgreSQL.
Json = sa.Text().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "trained_models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project", sa.String(100), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=False),
        sa.Column("request", Json, nullable=False),
        sa.Column("plan", Json, nullable=False),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("progress", Json, nullable=True),
        sa.Column("result", Json, nullable=True),
        sa.Column("evaluation", Json, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("runner", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("slug", name="uq_trained_models_slug"),
    )
    op.create_index("ix_trained_models_project", "trained_models", ["project", "created_at"])
    op.create_index("ix_trained_models_status", "trained_models", ["status"])


def downgrade() -> None:
    op.drop_table("trained_models")
