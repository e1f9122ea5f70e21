"""`tokbench compare RUN_A RUN_B`: matched cases side by side, with speed ratios.

Cases match as the gate matches them (harness.gate.matching.case_key: backend, model identity,
workload, parameters); fingerprints are checked the gate's way too. A hard-field difference
(CPU, cores, RAM, GPUs, engine build) refuses the comparison unless forced, and a forced one says
so above and below the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.gate.matching import (
    case_key,
    case_label,
    case_metrics,
    check_fingerprints,
    metric_values,
    tool_of,
)
from harness.gate.statistics import compare

EXIT_OK, EXIT_NOT_COMPARABLE = 0, 4
COLUMNS = ("case", "metric", "A median", "B median", "B ÷ A speed [95% CI]", "status")


@dataclass
class RunComparison:
    run_a: str
    run_b: str
    rows: pd.DataFrame
    not_comparable: str | None = None
    forced: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_NOT_COMPARABLE if self.not_comparable and not self.forced else EXIT_OK

    @property
    def banner(self) -> str | None:
        """The loud line a forced or refused comparison carries."""
        if not self.not_comparable:
            return None
        if self.forced:
            return f"NOT COMPARABLE, shown because of --force: {self.not_comparable}"
        return f"NOT COMPARABLE (exit 4; --force shows it anyway): {self.not_comparable}"


def _num(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:,.2f}"


def _rows(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[dict[str, Any]]:
    case = b or a
    assert case is not None
    label = case_label(case)
    out = []
    for metric in case_metrics(case):
        va = metric_values(a, metric) if a else []
        vb = metric_values(b, metric) if b else []
        failed = [f"{who} {c['status']}: {c.get('error') or 'no result'}"
                  for who, c in (("A", a), ("B", b)) if c is not None and c["status"] != "ok"]
        status = "; ".join(failed) or ("only in A" if b is None else "only in B" if a is None else "ok")
        row = {"case": label, "metric": metric.title, "unit": metric.unit, "n_a": len(va), "n_b": len(vb),
               "median_a": math.nan, "median_b": math.nan, "speed_ratio": math.nan, "ci_low": math.nan,
               "ci_high": math.nan, "status": status}
        if va and vb:
            c = compare(va, vb, higher_is_better=metric.higher_is_better)
            row.update(median_a=c.median_baseline, median_b=c.median_current, speed_ratio=c.ratio,
                       ci_low=c.ci_low, ci_high=c.ci_high)
        elif va or vb:
            row.update(median_a=float(pd.Series(va).median()) if va else math.nan,
                       median_b=float(pd.Series(vb).median()) if vb else math.nan)
        out.append(row)
    return out


def _cross_tool_key(case: dict[str, Any], params: list[str], by_id: bool) -> tuple[Any, ...]:
    """What must be equal across tools: the engine, the model (its identity, else its size and
    llama.cpp's description of it), the workload and the parameters both tools record."""
    model = case.get("model_id") if by_id else (case.get("model_size_bytes"), case.get("model_desc"))
    shown = {k: v for k, v in (case.get("params") or {}).items() if k in params}
    return (case["backend"], model, case["workload"], json.dumps(shown, sort_keys=True), case.get("arm"))


def _keyer(doc_a: dict[str, Any], doc_b: dict[str, Any], warnings: list[str]
           ) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """case_key within one tool; across tools, a key on what both record, said in `warnings`."""
    if tool_of(doc_a["run"]) == tool_of(doc_b["run"]):
        return case_key
    cases = doc_a["cases"] + doc_b["cases"]
    keys = [set((c.get("params") or {}).keys()) for c in cases]
    shared = sorted(set.intersection(*keys)) if keys else []
    only = sorted(set.union(*keys) - set(shared)) if keys else []
    if only:
        warnings.append(f"across tools, cases match on the parameters both record ({', '.join(shared)}); "
                        f"not compared: {', '.join(only)}")
    by_id = all(c.get("model_id") for c in cases)
    if not by_id:
        warnings.append("models matched by size and description: a file's model is not readable here, "
                        "so its identity (size + header hash) is unknown")
    return lambda c: _cross_tool_key(c, shared, by_id)


def compare_documents(doc_a: dict[str, Any], doc_b: dict[str, Any], force: bool = False) -> RunComparison:
    """Every case of either run, matched by case key; ratios are B's speed over A's (> 1: B faster).
    Runs from different tools (an imported llama-bench run and a tokbench run) compare too: their
    engines may differ, and cases match on what both record."""
    not_comparable, warnings = check_fingerprints(doc_a, doc_b, across_tools=True)
    result = RunComparison(doc_a["run"]["run_id"], doc_b["run"]["run_id"], pd.DataFrame(),
                           not_comparable, force, warnings)
    if not_comparable and not force:
        return result
    key = _keyer(doc_a, doc_b, result.warnings)
    index_a = {key(c): c for c in doc_a["cases"]}
    keys_b = set()
    rows = []
    for b in doc_b["cases"]:
        keys_b.add(key(b))
        rows += _rows(index_a.get(key(b)), b)
    rows += [r for k, a in index_a.items() if k not in keys_b for r in _rows(a, None)]
    result.rows = pd.DataFrame(rows)
    return result


def display(result: RunComparison) -> pd.DataFrame:
    """Display cells, one row per case × metric."""
    if result.rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    r = result.rows

    def ratio(row: pd.Series) -> str:
        if math.isnan(row["speed_ratio"]):
            return "–"
        ci = "" if math.isnan(row["ci_low"]) else f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        return f"{row['speed_ratio']:.3f}{ci}"

    def median(side: str) -> list[str]:
        return [f"{_num(m)} {u} (n={n})"
                for m, u, n in zip(r[f"median_{side}"], r["unit"], r[f"n_{side}"], strict=True)]

    return pd.DataFrame({
        "case": r["case"], "metric": r["metric"], "A median": median("a"), "B median": median("b"),
        "B ÷ A speed [95% CI]": r.apply(ratio, axis=1), "status": r["status"],
    })
