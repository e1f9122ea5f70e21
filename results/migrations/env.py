"""Alembic's environment: migrate the connection results.store hands over, never a URL of its own."""

from alembic import context

from results.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
