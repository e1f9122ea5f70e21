"""Stored runs as pandas DataFrames: raw trials, and per case × phase summaries.

Failed cases stay in the case frame, with their error and empty statistics, so nothing that
went wrong silently disappears from a table or a report.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.common import capacity, serving
from harness.common.stats import rates, summarize
from results.schema import CASE_FIELDS, REQUEST_FIELDS, STAT_FIELDS, TRIAL_FIELDS, names
from results.store import Store

_CASE_COLUMNS = [n for n in names(CASE_FIELDS)
                 if n not in ("params", "param_defaults", "engine", "memory", "load", "client", "notes",
                                  "sweep", "aggregate")]
#: The phase a serving trial stores: output tokens over the trial's wall time.
SERVING_PHASE = "out"
#: llama-bench's pg test (imported): prompt and generated tokens over one timing of both.
COMBINED_PHASE = "pg"


def trials_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per trial phase, with its tokens/s."""
    rows = store.trials(run_id)
    df = pd.DataFrame(rows, columns=names(TRIAL_FIELDS))
    df.insert(0, "run_id", run_id)
    df["tps"] = df["n_tokens"] / (df["duration_ns"] / 1e9)
    return df


def phase_test_name(workload: str, phase: str, n_prompt: int, n_gen: int, n_depth: int) -> str:
    """llama-bench's test name for one phase: pp512, tg128@d1024 (the workload if one phase)."""
    n = n_prompt if phase == "pp" else n_gen
    return f"{phase}{n}" + (f"@d{n_depth}" if n_depth else "")


def cases_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per case and timed phase (a failed case with no trials keeps one row); param_X
    holds each parameter, `defaults` the backend's defaults as stored at run time ({} when the
    run predates stored defaults)."""
    trials = trials_frame(store, run_id)
    rows = []
    for case in store.cases(run_id):
        base = {k: case[k] for k in _CASE_COLUMNS}
        base.update({f"param_{k}": v for k, v in (case["params"] or {}).items()})
        base["defaults"] = case.get("param_defaults") or {}
        mine = trials[trials["case_id"] == case["case_id"]]
        aggregate = case.get("aggregate")
        if case.get("load"):
            phases = [SERVING_PHASE]
        elif aggregate and aggregate.get("phase"):
            phases = [aggregate["phase"]]
        elif (mine["phase"] == COMBINED_PHASE).any():
            phases = [COMBINED_PHASE]
        else:
            phases = [p for p, n in (("pp", case["n_prompt"]), ("tg", case["n_gen"])) if n]
        for phase in phases:
            sub = mine[mine["phase"] == phase]
            s = summarize(rates(sub["n_tokens"].tolist(), sub["duration_ns"].tolist())).as_dict()
            if aggregate and sub.empty and "tps_mean" in aggregate:
                s.update(n=aggregate.get("n_trials") or 0, mean=aggregate["tps_mean"],
                         stddev=aggregate.get("tps_stddev", math.nan))
            test = case["workload"] if phase in (SERVING_PHASE, COMBINED_PHASE) else phase_test_name(
                case["workload"], phase, case["n_prompt"], case["n_gen"], case["n_depth"])
            rows.append({
                **base, "phase": phase, "test": test,
                **{f"tps_{k}" if k != "n" else "n_trials": v for k, v in s.items()},
            })
    columns = _CASE_COLUMNS + names(STAT_FIELDS)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=columns)
    params = [c for c in df.columns if c.startswith("param_")]
    return df[columns + params + ["defaults"]]


def requests_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per request of the run's serving cases, with TTFT, TPOT and E2EL in ms."""
    rows = store.requests(run_id)
    df = pd.DataFrame(rows, columns=names(REQUEST_FIELDS))
    df.insert(0, "run_id", run_id)
    lat = [serving.request_latencies(r) for r in rows]
    for key in ("ttft", "tpot", "e2el"):
        df[f"{key}_ms"] = [x[key] for x in lat]
    return df


def serving_frame(store: Store, run_id: str, slo: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per serving case: counts, rates, and each latency's mean and percentiles with
    intervals (columns like ttft_p99, ttft_p99_low); goodput under `slo`, else under the SLOs the
    run was given. An imported case without request records shows the figures its tool reported
    (its aggregate's "serving" block, under these names), without intervals."""
    requests = store.requests(run_id)
    trials = trials_frame(store, run_id)
    rows = []
    for case in store.cases(run_id):
        if not case.get("load"):
            continue
        mine = [r for r in requests if r["case_id"] == case["case_id"]]
        wall = trials[(trials["case_id"] == case["case_id"]) & (trials["phase"] == SERVING_PHASE)]
        summary = serving.summarize(mine, float(wall["duration_ns"].sum()) / 1e9,
                                    slo or case["load"].get("slo"))
        kept = (case.get("aggregate") or {}).get("serving")
        if kept and not mine:  # imported without request records: the tool's own figures
            summary.update({k: v for k, v in kept.items() if k not in serving.LATENCIES})
            summary.update({k: {**summary[k], **kept[k]} for k in serving.LATENCIES
                            if isinstance(kept.get(k), dict)})
        row = {k: case[k] for k in _CASE_COLUMNS}
        row.update({f"param_{k}": v for k, v in (case["params"] or {}).items()})
        row["defaults"] = case.get("param_defaults") or {}
        row["notes"] = case.get("notes") or []
        row["client"] = case.get("client") or {}
        row["sweep"] = case.get("sweep")
        row["concurrency"] = case["load"].get("concurrency")
        row["rate"] = case["load"].get("rate")
        for key, value in summary.items():
            if key in serving.LATENCIES:
                row.update({f"{key}_{k}": v for k, v in value.items()})
            elif key == "goodput":
                row.update({f"goodput_{k}": v for k, v in value.items()})
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)


def searches(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's searched loads (sweep:…, capacity:…): for each, its steps (serving_frame rows in
    order), why it ended, and for a capacity search the answer, re-judged from the stored
    requests by the rules that chose its steps."""
    frame = serving_frame(store, run_id)
    if frame.empty or frame["sweep"].isna().all():
        return []
    frame = frame[frame["sweep"].notna()]
    requests = store.requests(run_id)
    trials = trials_frame(store, run_id)
    out = []
    for search_id in dict.fromkeys(d["id"] for d in frame["sweep"]):
        steps = frame[frame["sweep"].map(lambda d, i=search_id: d["id"] == i)]
        docs = list(steps["sweep"])
        first, last = docs[0], docs[-1]
        entry: dict[str, Any] = {"id": search_id, "kind": first["kind"], "search": first["search"],
                                 "backend": steps["backend"].iloc[0], "model": steps["model"].iloc[0],
                                 "steps": steps.reset_index(drop=True), "stop": last.get("stop"),
                                 "capacity": None}
        if first["kind"] == "capacity":
            points = []
            for case_id, doc in zip(steps["case_id"], docs, strict=True):
                wall = trials[(trials["case_id"] == case_id) & (trials["phase"] == SERVING_PHASE)]
                points.append(capacity.Point(doc["level"], [r for r in requests if r["case_id"] == case_id],
                                             float(wall["duration_ns"].sum()) / 1e9, doc["step"]))
            cap = capacity.capacity(points, first["slo"], first["percentile"], first["confidence"],
                                    first["by"], first["max_level"])
            entry["capacity"] = cap
            entry["answer"] = capacity.describe(cap, first["by"], first["percentile"], first["slo"])
        out.append(entry)
    return out
