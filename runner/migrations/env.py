"""Alembic environment: runs on the connection that ``runner.db.init_db`` passes in."""

from __future__ import annotations

from alembic import context

from runner.db import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through runner.db.init_db(url), which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
