"""Results: the schema, the store (a SQLite file or a PostgreSQL fleet database), DataFrames and
import/export.

>>> import results
>>> cases = results.load()                  # last run, one row per case × phase
>>> trials = results.load(level="trials")   # raw per-trial samples
>>> serving = results.load(level="serving")  # serving cases: TTFT/TPOT/ITL/E2EL percentiles, goodput
>>> reqs = results.load(level="requests")    # one row per request of a serving case
>>> fleet = results.load("last", store="postgresql://lab@db.example/tokbench")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from results.schema import SCHEMA_VERSION
from results.store import Store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCHEMA_VERSION", "Store", "load"]


LEVELS = ("cases", "trials", "serving", "requests")


def load(run: str = "last", level: str = "cases", store: str | Path | None = None) -> pd.DataFrame:
    """A stored run as a DataFrame: level "cases" (statistics per case × phase), "trials" (raw
    samples), "serving" (one row per serving case) or "requests" (one row per request)."""
    from results import frames  # pandas: only for readers

    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    db = Store(store, create=False)
    try:
        run_id = db.resolve_run(run)
        return getattr(frames, f"{level}_frame")(db, run_id)
    finally:
        db.close()
