"""Alembic migrations of the result store, run by results.store when a store is behind
results.schema.HEAD_REVISION; on the store's own connection, inside its transaction."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError

_HERE = Path(__file__).parent


def _config(conn: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = conn
    return config


def known(revision: str | None) -> bool:
    """Whether this tokbench has the revision (None: a store from before Alembic, or a new one)."""
    if revision is None:
        return True
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except (CommandError, ResolutionError):
        return False


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def upgrade(conn: sa.Connection) -> None:
    command.upgrade(_config(conn), "head")
