"""The schema, in SQLAlchemy Core. Changing it needs a migration under `migrations/versions`.

Times are integer milliseconds since the epoch (portable and exact on both databases). JSON columns are JSONB
on PostgreSQL and JSON text on SQLite (`JsonText`): what the API accepted reads back as the same value.
Every row belongs to a project, and every query filters on it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import TypeCompiler

metadata = MetaData()


class JsonText(JSON):
    """SQLAlchemy's JSON (operators, `json_each`, the serializer) declared as TEXT on SQLite.

    SQLite gives a column declared `JSON` NUMERIC affinity, which turns the JSON text `5` into the INTEGER 5,
    `1.0` into 1, and an integer beyond 64 bits into a rounded REAL: a bare number came back as something the
    JSON reader could not decode, or as another number. TEXT affinity keeps the text exactly as written.
    """

    cache_ok = True


@compiles(JsonText, "sqlite")
def _sqlite_json_text(type_: JsonText, compiler: TypeCompiler, **kw: object) -> str:
    return "TEXT"


Json = JsonText().with_variant(JSONB(), "postgresql")

logs = Table(
    "logs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(100), nullable=False),
    Column("source", String(20), nullable=False),  # chat | report | report-anthropic
    Column("completion_id", String(100), nullable=True, index=True),
    Column("model", String(200), nullable=True),
    Column("requested_at", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("req_payload", Json, nullable=True),
    Column("resp_payload", Json, nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("cost", Float, nullable=True),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("key_id", String(40), nullable=True),
    Column("meta", Json, nullable=False),  # metadata: string -> string, op-tags merged in
    Column("tags", Json, nullable=False),  # the deprecated tags as sent (op-tags header, report's tags)
    Index("ix_logs_project_time", "project", "requested_at", "id"),
    Index("ix_logs_project_model", "project", "model"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(100), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

dataset_entries = Table(
    "dataset_entries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset_id", String(40), ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("split", String(5), nullable=False),  # TRAIN | TEST
    Column("messages", Json, nullable=False),
    Column("rejected_message", Json, nullable=True),
    Column("tools", Json, nullable=True),
    Column("tool_choice", Json, nullable=True),
    Column("response_format", Json, nullable=True),
    Column("meta", Json, nullable=True),
    Column("log_id", String(40), nullable=True),  # the log it was made from, if any
    Index("ix_dataset_entries_dataset", "dataset_id", "created_at", "id"),
)

cache_entries = Table(
    "cache_entries",
    metadata,
    Column("project", String(100), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("completion", Json, nullable=False),
)

criteria = Table(
    "criteria",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(100), nullable=False),
    Column("name", String(100), nullable=False),
    Column("version", Integer, nullable=False),  # versions are immutable: a change is a new version
    Column("description", Text, nullable=False),
    Column("instructions", Text, nullable=False),
    Column("judge_model", String(200), nullable=False),
    Column("judge_settings", Json, nullable=False),  # sampling settings of the judge: temperature, max_tokens, ...
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),  # kept so that judged logs still name their version
    UniqueConstraint("project", "name", "version", name="uq_criteria_project_name_version"),
)

# One judgement of one choice of a logged completion, queryable by score (`GET /logs?criteria.<name>.score<…`).
log_criteria = Table(
    "log_criteria",
    metadata,
    Column("log_id", String(40), ForeignKey("logs.id", ondelete="CASCADE"), primary_key=True),
    Column("choice_index", Integer, primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("status", String(10), nullable=False),  # success | error
    Column("score", Float, nullable=True),
    Column("explanation", Text, nullable=True),
    Column("error_code", Integer, nullable=True),
    Column("error_message", Text, nullable=True),
    Index("ix_log_criteria_name_score", "name", "score"),
)

# A model trained here (`POST /models`): its job while it is queued and trains, then the served model
# `openpipe:<slug>`. Slugs are unique across projects, since the served names are.
trained_models = Table(
    "trained_models",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(100), nullable=False),
    Column("slug", String(64), nullable=False),
    Column("status", String(20), nullable=False),  # PENDING | TRAINING | DEPLOYED | ERROR
    Column("base_model", String(200), nullable=False),
    Column("dataset_id", String(40), nullable=False),
    Column("request", Json, nullable=False),  # the trainingConfig and evaluation as sent
    Column("plan", Json, nullable=False),  # the hyperparameters as resolved, what the job runs
    Column("error_message", Text, nullable=True),
    Column("progress", Json, nullable=True),  # phase, step/steps, loss, examples/s, time left
    Column("result", Json, nullable=True),  # what training measured: examples, seconds, losses, peak memory
    Column("evaluation", Json, nullable=True),  # exact match (and criteria) on TEST entries, against the base
    Column("attempts", Integer, nullable=False),  # times a runner started the job (a restart runs it again)
    Column("runner", String(200), nullable=True),  # host:pid of the process running it
    Column("heartbeat_at", BigInteger, nullable=True),  # that process's last sign of life
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("slug", name="uq_trained_models_slug"),
    Index("ix_trained_models_project", "project", "created_at"),
    Index("ix_trained_models_status", "status"),
)
