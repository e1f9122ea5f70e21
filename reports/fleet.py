"""`tokbench fleet`: a device × engine × model × test matrix over the runs of a fleet store.

Runs from many machines are selected with filters (`host=`, `cpu=`, `gpu=`, `engine=`, `model=`,
`since=`, `until=`, `status=`); each matrix row pools every trial of the selected runs that
measured that test of that model on that engine and device (the same parameters; parameters
that vary are part of the row). Beside the pooled median stand the fraction of the bandwidth
roofline (reports.comparison.measured_roofline, per run, as `tokbench report` computes it), the
peak memory, and the published figures for the model (results/data/published.toml) with ratios.

Everything read back from the store is data from another machine: the writers escape it for
HTML and Markdown (Markdown's own punctuation too), the plot draws it as plain text, and CSV
guards it against spreadsheet formulas.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.common.errors import TokbenchError
from harness.common.stats import summarize
from reports import comparison as cmp
from reports.plots import Spec, _png, _short, draw_specs
from reports.report import Report, Section, write
from reports.tables import _median, _size
from results.export import csv_text
from results.frames import SERVING_PHASE, cases_frame, trials_frame
from results.reference import Device, Figure, device_for
from results.store import Store

#: --where keys and what each selects. Repeating a key ORs its values; different keys AND.
FILTERS: dict[str, str] = {
    "host": "the run's host name (exact, case-insensitive)",
    "cpu": "substring of the run profile's CPU name (case-insensitive)",
    "gpu": "substring of a GPU name in the run's profile (case-insensitive); `none`: no GPU",
    "engine": "the case's backend (llama.cpp, vllm…), or a substring of its engine and version",
    "backend": "the case's backend name (exact)",
    "model": "substring of the case's model source or the engine's model description",
    "since": "runs started at or after this ISO date or datetime (UTC unless it gives an offset)",
    "until": "runs started before this ISO datetime, or on or before this ISO date (UTC)",
    "status": "the run's stored status: complete, failed, interrupted or running",
}
RUN_STATUSES = ("complete", "failed", "interrupted", "running")
NO_GPU = "none"

#: Matrix rows are keyed by these (plus the parameters that vary): one row per device × engine ×
#: model × test.
KEY = ["host", "cpu", "gpu", "engine", "model", "quant", "test"]


# -- filters --------------------------------------------------------------------------------------
def _valid_keys() -> str:
    return ", ".join(FILTERS)


def _timestamp(key: str, text: str) -> float:
    """An ISO date or datetime as a UNIX time (UTC when it states no offset); `until=DATE` means
    the end of that day."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc)
            return (day + dt.timedelta(days=1 if key == "until" else 0)).timestamp()
        when = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise TokbenchError(f"--where {key}={text!r}: not an ISO date or datetime (e.g. 2025-06-01 or "
                            "2025-06-01T14:30, UTC unless an offset is given)") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


@dataclass(frozen=True)
class Filters:
    """Parsed --where filters: each key's values (ORed); since/until as UNIX times."""

    values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    since: float | None = None
    until: float | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, vs in self.values.items() for v in vs]
        parts += [f"{k}={_utc(t)}" for k, t in (("since", self.since), ("until", self.until)) if t]
        return ", ".join(parts) or "all runs"

    def run_matches(self, run: dict[str, Any]) -> bool:
        host = (run.get("host") or "").lower()
        if "host" in self.values and host not in (v.lower() for v in self.values["host"]):
            return False
        cpu = cpu_name(run).lower()
        if "cpu" in self.values and not any(v.lower() in cpu for v in self.values["cpu"]):
            return False
        if "gpu" in self.values:
            gpus = [g.lower() for g in gpu_names(run)]
            if not any((not gpus) if v.lower() == NO_GPU else any(v.lower() in g for g in gpus)
                       for v in self.values["gpu"]):
                return False
        if "status" in self.values and run.get("status") not in self.values["status"]:
            return False
        started = run.get("started_at") or 0.0
        return (self.since is None or started >= self.since) and (self.until is None or started < self.until)

    def case_mask(self, cases: pd.DataFrame) -> pd.Series:
        keep = pd.Series(True, index=cases.index)
        if "backend" in self.values:
            keep &= cases["backend"].isin(self.values["backend"])
        if "engine" in self.values:
            engine = cases["engine_label"].str.lower()
            keep &= pd.concat([cases["backend"].str.lower() == v.lower()
                               for v in self.values["engine"]]
                              + [engine.str.contains(v.lower(), regex=False)
                                 for v in self.values["engine"]], axis=1).any(axis=1)
        if "model" in self.values:
            desc = cases["model_desc"].fillna("").astype(str)
            text = (cases["model"].astype(str) + "\n" + desc).str.lower()
            keep &= pd.concat([text.str.contains(v.lower(), regex=False) for v in self.values["model"]],
                              axis=1).any(axis=1)
        return keep


def parse_filters(items: Iterable[str]) -> Filters:
    """`KEY=VALUE` strings → Filters; a malformed item or unknown key is one TokbenchError line
    naming it and the valid keys."""
    values: dict[str, list[str]] = {}
    since = until = None
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise TokbenchError(f"--where {item!r}: give KEY=VALUE, with KEY one of {_valid_keys()}")
        if key not in FILTERS:
            raise TokbenchError(f"--where {item!r}: unknown key {key!r}; valid keys: {_valid_keys()}")
        if not value.strip():
            raise TokbenchError(f"--where {item!r}: {key} needs a value ({FILTERS[key]})")
        if key == "since":
            since = _timestamp(key, value)
        elif key == "until":
            until = _timestamp(key, value)
        elif key == "status" and value not in RUN_STATUSES:
            raise TokbenchError(f"--where {item!r}: status is one of {', '.join(RUN_STATUSES)}")
        else:
            values.setdefault(key, []).append(value)
    if since is not None and until is not None and until <= since:
        raise TokbenchError("--where since=… is not before until=…: no run can match")
    return Filters({k: tuple(v) for k, v in values.items()}, since, until)


# -- what a run says about its machine ------------------------------------------------------------
def _hard(run: dict[str, Any]) -> dict[str, Any]:
    return (run.get("fingerprint") or {}).get("hard") or {}


def cpu_name(run: dict[str, Any]) -> str:
    """The CPU the run's profile names (an imported run: the one its file states), or ''."""
    return str((run.get("profile") or {}).get("cpu_brand") or _hard(run).get("cpu_brand") or "")


def gpu_names(run: dict[str, Any]) -> list[str]:
    """The GPUs of the run's profile (NVML names; an imported run: those its file states)."""
    gpus = (run.get("profile") or {}).get("gpus")
    if gpus:
        return [str(g.get("name") or "unnamed GPU") for g in gpus]
    return [str(g) for g in _hard(run).get("gpus") or []]


def _utc(t: float | None) -> str:
    return "–" if t is None else time_text(t)


def time_text(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def engine_label(backend: str, engine: dict[str, Any] | None) -> str:
    """Backend and engine version: `llama.cpp (llama-cpp-python 0.3.36)`, or the backend alone."""
    engine = engine or {}
    name, version = engine.get("engine"), engine.get("engine_version")
    if not version:
        return backend
    return f"{backend} {version}" if not name or name == backend else f"{backend} ({name} {version})"


def catalog_device(backend: str, run: dict[str, Any], catalog: dict[str, Device]) -> Device | None:
    """The catalog device a case ran on, for matching published figures: the GPU or Apple chip
    the report's case_device finds, else a catalog device whose `match` or name is in the CPU name."""
    device = cmp.case_device(backend, run, catalog)
    if device.key in catalog:
        return device
    cpu = cpu_name(run)
    if not device.measured:  # an accelerator the catalog does not know
        return None
    if not cpu:
        return None
    return device_for(cpu, catalog) or next(
        (d for d in catalog.values() if d.name.lower() in cpu.lower()), None)


def catalog_of(source: str, desc: str | None, quant: str | None) -> tuple[str, str] | None:
    """(catalog model, quant) of a case: a synth: source's, else the engine's description read as
    `ARCH SIZE …` (llama.cpp's `lfm2 1.2B Q4_K - Medium` → lfm2-1.2b) when that names a catalog model."""
    from harness.models.catalog import CATALOG

    found = cmp.catalog_model(source, quant)
    if found:
        return found
    words = (desc or "").split()
    name = "-".join(words[:2]).lower() if len(words) >= 2 else ""
    return (name, (quant or "").upper()) if name in CATALOG and quant else None


# -- selection --------------------------------------------------------------------------------------
@dataclass
class Selected:
    """The runs the filters chose: each with its cases (frames.cases_frame, plus the fleet's
    columns) and its trials (frames.trials_frame)."""

    runs: list[cmp.RunData]
    trials: pd.DataFrame
    skipped: list[str]  # one line per kind of case left out, and why


def _with_fleet_columns(run: dict[str, Any], cases: pd.DataFrame, engines: dict[int, Any]) -> pd.DataFrame:
    gpus = gpu_names(run)
    return cases.assign(
        host=run.get("host") or "host not stated",
        cpu=cpu_name(run) or "CPU not stated",
        gpu=", ".join(gpus) if gpus else NO_GPU,
        engine_label=[engine_label(b, engines.get(c)) for b, c in zip(cases["backend"], cases["case_id"],
                                                                       strict=True)],
    )


def select(store: Store, filters: Filters) -> Selected:
    """Every run the filters choose, with its matching token-workload cases."""
    runs, trials, skipped = [], [], {"serving": 0, "aggregate": 0}
    for run in store.runs():
        if not filters.run_matches(run):
            continue
        run_id = str(run["run_id"])
        stored = store.cases(run_id)
        engines = {c["case_id"]: c.get("engine") for c in stored}
        aggregates = {c["case_id"] for c in stored if c.get("aggregate")}
        cases = cases_frame(store, run_id)
        if cases.empty:
            continue
        cases = _with_fleet_columns(run, cases, engines)
        cases = cases[filters.case_mask(cases)]
        serving = cases["phase"] == SERVING_PHASE
        skipped["serving"] += int(cases.loc[serving, "case_id"].nunique())
        cases = cases[~serving]
        if cases.empty:
            continue
        mine = trials_frame(store, run_id)
        mine = mine[mine["case_id"].isin(cases["case_id"])]
        measured = cases.merge(mine[["case_id", "phase"]].drop_duplicates(), on=["case_id", "phase"],
                               how="left", indicator=True)["_merge"].eq("both").to_numpy()
        aggregate_only = cases["case_id"].isin(aggregates).to_numpy() & ~measured
        skipped["aggregate"] += int(aggregate_only.sum())
        cases = cases[~aggregate_only]
        if cases.empty:
            continue
        runs.append(cmp.RunData(run, cases.reset_index(drop=True)))
        trials.append(mine)
    notes = []
    if skipped["aggregate"]:
        notes.append(f"{skipped['aggregate']} imported case phase(s) kept no per-trial samples (their tool's "
                     "mean only): left out of the pooled medians")
    if skipped["serving"]:
        notes.append(f"{skipped['serving']} serving case(s) left out: the matrix holds token workloads "
                     "(see `tokbench report` for serving)")
    frame = pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(
        columns=["run_id", "case_id", "trial", "phase", "n_tokens", "duration_ns", "tps"])
    return Selected(runs, frame, notes)


def _local_model_paths(runs: list[cmp.RunData]) -> None:
    """Where another host's model file is not here, point the case at a file here with the same
    model_id (size + header hash: the same shape), so the roofline can read its bytes/token."""
    here: dict[str, str] = {}
    for rd in runs:
        for mid, path in zip(rd.cases["model_id"], rd.cases["model_path"], strict=True):
            if isinstance(mid, str) and isinstance(path, str) and mid not in here and Path(path).is_file():
                here[mid] = path
    for rd in runs:
        ids, paths = rd.cases["model_id"], rd.cases["model_path"]
        rd.cases["model_path"] = [here.get(m, p) if isinstance(m, str) and not (isinstance(p, str)
                                                                                 and Path(p).is_file())
                                  else p for m, p in zip(ids, paths, strict=True)]


# -- the matrix -----------------------------------------------------------------------------------------
def _params_key(params: dict[str, Any], shown: set[str]) -> str:
    return ", ".join(f"{k}={params[k]}" for k in sorted(shown) if k in params)


def _varying_params(cases: pd.DataFrame) -> dict[str, set[str]]:
    """Per backend, the parameters whose values differ between its cases."""
    out: dict[str, set[str]] = {}
    for backend, group in cases.groupby("backend"):
        cols = [c for c in group.columns if c.startswith("param_")]
        out[str(backend)] = {c.removeprefix("param_") for c in cols
                             if group[c].map(lambda v: json.dumps(v, default=str)).nunique() > 1}
    return out


def _figure_order(f: Figure, device: str | None, quant: str, backend: str) -> tuple[int, int, int]:
    return (f.device != device, f.quant_for_roofline.upper() != quant.upper(),
            (f.engine or "").lower() != backend.lower())


def _published(cell: dict[str, Any], figures: list[Figure], published: pd.DataFrame) -> dict[str, Any]:
    """The speed figures published for the cell's catalog model at its batch, the closest first
    (same device, then same quant, then same engine), with the ratios to the closest one."""
    none = {"published": "", "n_published": 0, "published_closest": "", "published_figure": "",
            "published_device": "", "published_tps": math.nan, "published_fraction": math.nan,
            "published_same_device": False, "measured_over_published": math.nan,
            "fraction_over_published": math.nan}
    catalog = cell["catalog"]
    if cell["phase"] != "tg" or not catalog:
        return none
    name, quant = catalog.split("@")
    metric = "decode_tps" if cell["batch"] == 1 else "aggregate_tps"
    found = [f for f in figures if f.model == name and f.metric == metric and (f.batch or 1) == cell["batch"]]
    if not found:
        return none
    found.sort(key=lambda f: _figure_order(f, cell["catalog_device"], quant, cell["backend"]))
    by_id = published.set_index("figure") if not published.empty else None

    def fraction(f: Figure) -> float:
        if by_id is None or f.id not in by_id.index:
            return math.nan
        ceiling = by_id.loc[f.id, "ceiling_tps"]
        return f.value / ceiling if not pd.isna(ceiling) else math.nan

    def text(f: Figure) -> str:
        frac = fraction(f)
        how = ", ".join(x for x in (f.engine or "engine not stated",
                                    f.quant or f"{f.quant_for_roofline} assumed") if x)
        return (f"{f.shown} on {f.device_as_given} ({how}"
                + (f"; {cmp.fmt_pct(frac)} of its ceiling" if not pd.isna(frac) else "") + ")")

    best = found[0]
    same = best.device == cell["catalog_device"] and best.quant_for_roofline.upper() == quant.upper()
    best_fraction = fraction(best)
    return {
        "published": "; ".join(text(f) for f in found), "n_published": len(found),
        "published_closest": text(best), "published_figure": best.id,
        "published_device": best.device_as_given, "published_tps": best.value,
        "published_fraction": best_fraction, "published_same_device": same,
        "measured_over_published": cell["tps_median"] / best.value if same else math.nan,
        "fraction_over_published": cell["fraction"] / best_fraction
        if not pd.isna(best_fraction) else math.nan,
    }


def build_matrix(selected: Selected) -> pd.DataFrame:
    """One row per device × engine × model × test (× parameters that vary): the median of every
    trial the selected runs measured for it, pooled; its fraction of the bandwidth roofline (each
    trial against its own run's ceiling); peak memory; published figures and ratios."""
    runs = selected.runs
    columns = [*KEY, "params", "backend", "engine_version", "workload", "phase", "batch", "n_runs",
               "n_trials", "n_cases", "n_failed", "tps_median", "tps_ci_low", "tps_ci_high", "tps_min",
               "tps_max", "bandwidth_gbs", "bytes_per_token", "ceiling_tps", "fraction", "peak_rss_bytes",
               "catalog", "catalog_device", "published", "n_published", "published_closest",
               "published_figure", "published_device", "published_tps", "published_fraction",
               "published_same_device", "measured_over_published", "fraction_over_published", "runs",
               "errors", "notes"]
    if not runs:
        return pd.DataFrame(columns=columns)
    _local_model_paths(runs)
    figures, catalog = cmp.reference()
    published = cmp.published_roofline(figures, catalog)
    roof = cmp.measured_roofline(runs, catalog)
    decode = pd.concat([rd.cases[rd.cases["phase"] == "tg"] for rd in runs], ignore_index=True)
    if not roof.empty:  # measured_roofline keeps the tg rows' order, run by run
        roof["case_id"] = decode["case_id"].to_numpy()
    cases = pd.concat([rd.cases.assign(run_id=rd.run_id) for rd in runs], ignore_index=True)
    by_run = {rd.run_id: rd.run for rd in runs}
    varying = _varying_params(cases)
    cases["params"] = [_params_key({k.removeprefix("param_"): row[k] for k in row.index
                                    if k.startswith("param_") and not _missing(row[k])},
                                   varying.get(row["backend"], set())) for _, row in cases.iterrows()]
    cases["test_label"] = [f"{t} ({w})" if "+" in w else t
                           for t, w in zip(cases["test"], cases["workload"], strict=True)]
    cases["model_label"] = cases["model_desc"].fillna(cases["model"].map(lambda m: str(m).rsplit("/", 1)[-1]))
    cases["quant_label"] = cases["quant"].fillna("–")
    cases["batch"] = [cmp.batch_of(r) for _, r in cases.iterrows()]
    ceilings = (roof.set_index("case_id") if not roof.empty else pd.DataFrame(
        columns=["ceiling_tps", "bandwidth_gbs", "bytes_per_token", "cache_resident", "notes"]))
    trials = selected.trials.merge(cases[["case_id", "phase"]], on=["case_id", "phase"])
    trials["ceiling_tps"] = trials["case_id"].map(ceilings["ceiling_tps"]) if not roof.empty else math.nan
    trials.loc[trials["phase"] != "tg", "ceiling_tps"] = math.nan

    rows = []
    group_key = ["host", "cpu", "gpu", "engine_label", "model_label", "quant_label", "test_label", "params"]
    for key, group in cases.groupby(group_key, sort=False, dropna=False):
        host, cpu, gpu, engine, model, quant, test, params = key
        first = group.iloc[0]
        mine = trials[trials["case_id"].isin(group["case_id"]) & (trials["phase"] == first["phase"])]
        tps = mine["tps"].to_numpy(dtype=float)
        s = summarize(tps)
        ceiling = mine["ceiling_tps"].to_numpy(dtype=float)
        usable = ~np.isnan(ceiling)
        fraction = float(np.median(tps[usable] / ceiling[usable])) if usable.any() else math.nan
        decode_ids = ceilings.index.intersection(group["case_id"]) if first["phase"] == "tg" else []
        info = ceilings.loc[decode_ids] if not roof.empty else ceilings
        run_ids = list(dict.fromkeys(group["run_id"]))
        failed = group[group["status"] != "ok"]
        notes = sorted({n for n in info.get("notes", pd.Series(dtype=str)) if isinstance(n, str) and n})
        device = catalog_device(first["backend"], by_run[run_ids[0]], catalog)
        found = catalog_of(str(first["model"]), first["model_desc"], first["quant"])
        cell = {
            "host": host, "cpu": cpu, "gpu": gpu, "engine": engine, "model": model, "quant": quant,
            "test": test, "params": params, "backend": first["backend"],
            "engine_version": engine.removeprefix(first["backend"]).strip(" ()"),
            "workload": first["workload"], "phase": first["phase"], "batch": int(first["batch"]),
            "n_runs": int(mine["run_id"].nunique()), "n_trials": int(s.n),  # runs whose trials are pooled
            "n_cases": int(group["case_id"].nunique()), "n_failed": int(failed["case_id"].nunique()),
            "tps_median": s.median, "tps_ci_low": s.ci_low, "tps_ci_high": s.ci_high,
            "tps_min": s.min, "tps_max": s.max,
            "bandwidth_gbs": _median_of(info.get("bandwidth_gbs")),
            "bytes_per_token": _median_of(info.get("bytes_per_token")),
            "ceiling_tps": float(np.nanmedian(ceiling)) if usable.any() else math.nan,
            "fraction": fraction, "peak_rss_bytes": _max_of(group["peak_rss_bytes"]),
            "catalog": "@".join(found) if found else "", "catalog_device": device.key if device else None,
            "runs": "; ".join(run_ids),
            "errors": "; ".join(dict.fromkeys(f"{r['status']}: {r['error'] or 'no result'}"
                                              for _, r in failed.iterrows())),
            "notes": "; ".join(notes),
        }
        cell.update(_published(cell, figures, published))
        rows.append(cell)
    out = pd.DataFrame(rows, columns=columns)
    order = {t: i for i, t in enumerate(dict.fromkeys(cases["test_label"]))}
    out = out.sort_values(["model", "quant", "test", "host", "cpu", "gpu", "engine", "params"],
                          key=lambda c: c.map(order) if c.name == "test" else c.astype(str).str.lower(),
                          kind="stable", ignore_index=True)
    return out


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _median_of(values: pd.Series | None) -> float:
    vals = pd.to_numeric(values, errors="coerce").dropna() if values is not None else pd.Series(dtype=float)
    return float(vals.median()) if not vals.empty else math.nan


def _max_of(values: pd.Series) -> float:
    vals = pd.to_numeric(values, errors="coerce").dropna()
    return float(vals.max()) if not vals.empty else math.nan


# -- display ---------------------------------------------------------------------------------------------
def _num(x: float, fmt: str = ",.1f") -> str:
    return "–" if x is None or pd.isna(x) else format(x, fmt)


def matrix_table(matrix: pd.DataFrame) -> pd.DataFrame:
    """Display cells of the matrix: optional columns only where some row fills them."""
    if matrix.empty:
        return pd.DataFrame()
    table = pd.DataFrame({
        "host": matrix["host"], "CPU": matrix["cpu"], "GPU": matrix["gpu"], "engine": matrix["engine"],
        "model": matrix["model"], "quant": matrix["quant"], "test": matrix["test"],
        "params": matrix["params"],
        "runs": matrix["n_runs"].astype(str), "trials": matrix["n_trials"].astype(str),
        "median tok/s [95% CI]": [
            _median(m, lo, hi, n, a, b) for m, lo, hi, n, a, b in zip(
                matrix["tps_median"], matrix["tps_ci_low"], matrix["tps_ci_high"], matrix["n_trials"],
                matrix["tps_min"], matrix["tps_max"], strict=True)],
        "bandwidth": matrix["bandwidth_gbs"].map(lambda x: f"{_num(x)} GB/s" if not pd.isna(x) else "–"),
        "ceiling": matrix["ceiling_tps"].map(_num),
        "fraction": matrix["fraction"].map(cmp.fmt_pct),
        "peak RSS": matrix["peak_rss_bytes"].map(_size),
        "published": [(c or "–") + (f" (+{n - 1} more, for other devices or quants: see the CSV)"
                                    if n > 1 else "")
                      for c, n in zip(matrix["published_closest"], matrix["n_published"], strict=True)],
        "measured ÷ published": matrix["measured_over_published"].map(lambda x: _num(x, ".2f")),
        "fraction ÷ published fraction": matrix["fraction_over_published"].map(lambda x: _num(x, ".2f")),
        "failed": [f"{f} of {n} cases: {e}" if f else "" for f, n, e in
                   zip(matrix["n_failed"], matrix["n_cases"], matrix["errors"], strict=True)],
        "notes": matrix["notes"],
    })
    optional = ("params", "GPU", "bandwidth", "ceiling", "fraction", "published", "measured ÷ published",
                "fraction ÷ published fraction", "failed", "notes")
    empty = [c for c in optional if table[c].isin(["", "–", NO_GPU]).all()]
    return table.drop(columns=empty)


MATRIX_RIGHT = ("runs", "trials", "median tok/s [95% CI]", "bandwidth", "ceiling", "fraction", "peak RSS",
                "measured ÷ published", "fraction ÷ published fraction")


def devices_table(runs: list[cmp.RunData]) -> pd.DataFrame:
    """One row per device (host, CPU, GPU): its runs, cores, RAM and measured bandwidth."""
    rows = []
    for rd in runs:
        profile = rd.run.get("profile") or {}
        first = rd.cases.iloc[0]
        rows.append({"host": first["host"], "CPU": first["cpu"], "GPU": first["gpu"],
                     "cores": profile.get("physical_cores") or _hard(rd.run).get("physical_cores"),
                     "RAM": profile.get("ram_bytes"),
                     "bandwidth": (profile.get("memory_bandwidth") or {}).get("copy_gbps"),
                     "run": rd.run_id, "started": rd.run.get("started_at") or math.nan})
    data = pd.DataFrame(rows)
    if data.empty:
        return data
    out = []
    for (host, cpu, gpu), g in data.groupby(["host", "CPU", "GPU"], sort=False):
        cores = pd.to_numeric(g["cores"], errors="coerce").dropna()
        out.append({"host": host, "CPU": cpu, "GPU": gpu, "runs": len(g),
                    "cores": str(int(cores.iloc[0])) if not cores.empty else "–",
                    "RAM": _size(_max_of(g["RAM"])),
                    "bandwidth": (f"{_median_of(g['bandwidth']):,.1f} GB/s"
                                  if not pd.isna(_median_of(g["bandwidth"])) else "not measured"),
                    "first run": _utc(g["started"].min()), "last run": _utc(g["started"].max())})
    return pd.DataFrame(out)


def runs_table(runs: list[cmp.RunData]) -> pd.DataFrame:
    table = pd.DataFrame([{
        "run": rd.run_id, "host": rd.cases["host"].iloc[0], "started": _utc(rd.run.get("started_at")),
        "status": rd.run.get("status"), "cases": str(rd.cases["case_id"].nunique()),
        "imported from": (rd.run.get("source") or {}).get("tool") or "",
    } for rd in runs])
    if table.empty or table["imported from"].any():
        return table
    return table.drop(columns=["imported from"])


# -- the plot -------------------------------------------------------------------------------------------
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def _plain(text: object, n: int) -> str:
    """A label drawn as written: no control characters, shortened."""
    return _short(re.sub(r"[\x00-\x1f\x7f]", " ", str(text)), n)


def decode_by_device(matrix: pd.DataFrame) -> bytes | None:
    """Decode tok/s per device and engine (the pooled median; line: its 95% CI, or the range),
    grouped by model and test under a heading each; a device keeps its colour in every group."""
    ok = matrix[(matrix["phase"] == "tg") & matrix["tps_median"].notna()] if not matrix.empty else matrix
    if ok.empty:
        return None
    ok = ok.assign(series=[f"{h} · {c}" + (f" · {g}" if g != NO_GPU else "") + f" · {e}"
                           + (f" · {p}" if p else "")
                           for h, c, g, e, p in zip(ok["host"], ok["cpu"], ok["gpu"], ok["engine"],
                                                    ok["params"], strict=True)],
                   group=[f"{m} ({q}) · {t}"
                          for m, q, t in zip(ok["model"], ok["quant"], ok["test"], strict=True)])
    colors = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(dict.fromkeys(ok["series"]))}
    import matplotlib.figure
    import matplotlib.transforms

    n_groups = ok["group"].nunique()
    fig = matplotlib.figure.Figure(figsize=(10, 0.32 * (len(ok) + 1.5 * n_groups) + 1.2))
    ax = fig.subplots()
    heading = matplotlib.transforms.blended_transform_factory(ax.transAxes, ax.transData)
    y, ticks, labels = 0.0, [], []
    for group, rows in ok.groupby("group", sort=False):
        ax.text(0.005, y, _plain(group, 90), transform=heading, fontsize=9, fontweight="bold", va="center")
        y += 1
        for _, row in rows.iterrows():
            low = row["tps_ci_low"] if not pd.isna(row["tps_ci_low"]) else row["tps_min"]
            high = row["tps_ci_high"] if not pd.isna(row["tps_ci_high"]) else row["tps_max"]
            ax.barh(y, row["tps_median"], 0.8, color=colors[row["series"]])
            ax.plot([low, high], [y, y], color="black", lw=1)
            ax.text(high, y, f"  {row['tps_median']:,.1f}", fontsize=7, va="center")
            ticks.append(y)
            labels.append(_plain(row["series"], 64))
            y += 1
        y += 0.5
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(y - 0.5, -0.8)
    ax.set_xlim(0, float(ok["tps_max"].max()) * 1.15)
    ax.set_xlabel("decode tokens/s: median of the pooled trials (line: its 95% CI, or the range)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# -- the report --------------------------------------------------------------------------------------
MATRIX_INTRO = (
    "One row per device (host, CPU, GPU) × engine (backend and version) × model × test, with any "
    "parameter that differs between a backend's cases. `median tok/s`: the median of every trial of "
    "every selected run in the row, pooled (not a median of medians), with its distribution-free "
    "95% interval, or the range below the n where one exists; `runs`, `trials`: how many went in. "
    "Decode rows: `bandwidth` and `ceiling` are the median over the runs (each run's own measured "
    "copy bandwidth), and `fraction` is the median over the pooled trials of each trial's tok/s ÷ its "
    "run's ceiling (bytes/token as `tokbench report` derives them). `peak RSS`: the highest peak of the "
    "row's cases. `published`: the speed figures published for the same catalog model at the same "
    "batch, the closest first (same device, then same quant, then same engine); `measured ÷ "
    "published` compares with that first figure only where it is for this device and quant, and "
    "`fraction ÷ published fraction` compares fractions of each one's ceiling, which holds across "
    "devices and quants.")


def build_fleet_report(store: Store, filters: Filters) -> Report:
    selected = select(store, filters)
    matrix = build_matrix(selected)
    runs = selected.runs
    warnings = list(selected.skipped)
    for rd in runs:
        host = rd.cases["host"].iloc[0]
        if rd.run.get("status") != "complete":
            warnings.append(f"run {rd.run_id} ({host}) is {rd.run.get('status')}: its rows cover only its "
                            "finished trials")
        if rd.run.get("contended"):
            warnings.append(f"run {rd.run_id} ({host}) was contended: {len(rd.run['contended'])} other "
                            "tokbench run(s) were live on its host while it measured")
    failed = int(matrix["n_failed"].sum()) if not matrix.empty else 0
    if failed:
        warnings.append(f"{failed} case(s) did not succeed: their rows say so under `failed`")
    if not runs:
        warnings.append(f"no run matches {filters.describe()}")
    hosts = sorted({str(rd.cases["host"].iloc[0]) for rd in runs})
    started = [rd.run.get("started_at") for rd in runs if rd.run.get("started_at")]
    summary = [f"selected: {filters.describe()}",
               f"{len(runs)} run(s) from {len(hosts)} host(s)"
               + (f", {_utc(min(started))} to {_utc(max(started))}" if started else "")]
    devices, run_rows = devices_table(runs), runs_table(runs)
    sections = [
        Section("matrix", "Fleet matrix", MATRIX_INTRO, matrix_table(matrix), matrix, MATRIX_RIGHT),
        Section("devices", "Devices", "Each machine of the selected runs, from the profile its runs stored.",
                devices, devices, ("runs", "cores", "RAM", "bandwidth")),
        Section("runs", "Runs", "The selected runs, oldest first.", run_rows, run_rows, ("cases",)),
    ]
    specs: list[Spec] = [("decode", "Decode tok/s per device", "The pooled median decode tok/s of each "
                          "device and engine, grouped by model and test.", lambda: decode_by_device(matrix),
                          "no decode rows")]
    # data strings are text, never TeX or mathtext: a `$` in a host or model name stays a `$`
    plots, missing = draw_specs(specs, {"text.usetex": False, "text.parse_math": False})
    figures, _ = cmp.reference()
    used = set(matrix["published_figure"]) if not matrix.empty else set()
    seen = {s.key: s for f in figures if f.id in used for s in f.sources}
    sources = [(f"{s.title} ({s.author + ', ' if s.author else ''}{s.date})", s.url) for s in seen.values()]
    return Report("tokbench fleet report", summary, warnings, sections, plots, missing, sources)


# -- writing ------------------------------------------------------------------------------------------
#: Markdown's inline punctuation; `_` only where it could open or close emphasis (GFM never
#: treats an underscore between letters or digits as emphasis: Q4_K_M stays as written).
_MD_SPECIAL = re.compile(r"([\\`*\[\]~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def markdown_inert(text: str) -> str:
    """A string from the store as Markdown that renders as written: control characters (a newline
    would end a table row) as spaces, and Markdown's own punctuation backslash-escaped (code,
    emphasis, links, strike-through, GitHub's $math$); the Markdown writer escapes HTML and pipes."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), _CONTROL.sub(" ", text))


def _markdown_copy(report: Report) -> Report:
    """The report with every store-derived string made inert for Markdown (tables' cells, the run
    summary, warnings); titles and intros are tokbench's own."""
    def cells(table: pd.DataFrame) -> pd.DataFrame:
        return table.map(lambda v: markdown_inert(v) if isinstance(v, str) else v)

    sections = [replace(s, table=cells(s.table)) for s in report.sections]
    return replace(report, runs=[markdown_inert(r) for r in report.runs],
                   warnings=[markdown_inert(w) for w in report.warnings], sections=sections)


FORMATS = ("md", "markdown", "html", "csv")


def write_fleet(report: Report, fmt: str, output: Path | None) -> str | None:
    """Render and write (report.write); Markdown with store strings made inert; CSV without an
    output directory: the matrix alone, as text for stdout."""
    fmt = "md" if fmt == "markdown" else fmt
    if fmt == "csv" and output is None:
        return csv_text(report.sections[0].data)
    return write(_markdown_copy(report) if fmt == "md" else report, fmt, output)
