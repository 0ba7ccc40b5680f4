"""The store: request logs, datasets and the response cache in SQLite or PostgreSQL (SQLAlchemy, async)."""
