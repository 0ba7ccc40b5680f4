"""Alembic environment: pipeserve runs migrations itself, on a connection it hands over."""

from __future__ import annotations

from alembic import context

from pipeserve.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("pipeserve runs its migrations at start-up; there is no alembic.ini to run them by hand")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
