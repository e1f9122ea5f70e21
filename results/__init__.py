"""Results: the schema, the SQLite store, DataFrames and import/export.

>>> import results
>>> cases = results.load()                  # last run, one row per case × phase
>>> trials = results.load(level="trials")   # raw per-trial samples
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from results.schema import SCHEMA_VERSION
from results.store import Store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCHEMA_VERSION", "Store", "load"]


def load(run: str = "last", level: str = "cases", store: str | Path | None = None) -> pd.DataFrame:
    """A stored run as a DataFrame: level "cases" (statistics per case × phase) or "trials"."""
    from results.frames import cases_frame, trials_frame  # pandas: only for readers

    if level not in ("cases", "trials"):
        raise ValueError(f"level must be 'cases' or 'trials', not {level!r}")
    db = Store(store, create=False)
    try:
        run_id = db.resolve_run(run)
        return cases_frame(db, run_id) if level == "cases" else trials_frame(db, run_id)
    finally:
        db.close()
