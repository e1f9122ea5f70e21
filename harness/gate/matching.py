"""Stored runs → gate verdicts: case matching, fingerprint checks, accepted regressions.

Reads run documents (results.export.run_document, or a run exported as JSON) and never runs an
engine. Two entry points: `compare_runs` (a current run against one or more stored baseline
runs, whose spread measures run-to-run drift) and `compare_arms` (the B arm of a `tokbench ab`
run against its A arm, trial i of each paired).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.common import serving
from harness.gate.config import Acceptance, GateConfig
from harness.gate.statistics import (
    ERROR,
    INCONCLUSIVE,
    METRICS,
    NO_BASELINE,
    NOT_COMPARABLE,
    REGRESSION,
    Comparison,
    Metric,
    Thresholds,
    compare,
    compare_history,
)

EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_NOT_COMPARABLE = 0, 1, 2, 3, 4


@dataclass
class Entry:
    """One case × metric: raw samples, statistics, thresholds and verdict."""

    case: str
    metric: Metric
    baseline: list[float]
    current: list[float]
    thresholds: Thresholds
    verdict: str
    reason: str
    comparison: Comparison | None = None
    accepted: Acceptance | None = None
    expired: Acceptance | None = None

    @property
    def blocking(self) -> bool:
        """A regression that fails the gate (not covered by an unexpired acceptance)."""
        return self.verdict == REGRESSION and self.accepted is None


@dataclass
class GateReport:
    mode: str  # "gate" or "ab"
    baseline: dict[str, Any]  # run id, command, git commit, arm spec
    current: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_comparable: str | None = None
    strict: bool = False
    config: str = "built-in defaults"

    @property
    def exit_code(self) -> int:
        """4 not comparable; 1 a blocking regression; 2 an error; 3 inconclusive (with --strict)."""
        verdicts = [e.verdict for e in self.entries]
        if self.not_comparable or not verdicts or all(v == NO_BASELINE for v in verdicts):
            return EXIT_NOT_COMPARABLE
        if any(e.blocking for e in self.entries):
            return EXIT_REGRESSION
        if ERROR in verdicts:
            return EXIT_ERROR
        if self.strict and any(v in (INCONCLUSIVE, NO_BASELINE) for v in verdicts):
            return EXIT_INCONCLUSIVE
        return EXIT_PASS

    @property
    def summary(self) -> str:
        """One line: the outcome and the verdict counts."""
        if self.not_comparable:
            return f"NOT COMPARABLE: {self.not_comparable}"
        counts: dict[str, int] = {}
        for e in self.entries:
            name = f"{e.verdict} (accepted)" if e.accepted else e.verdict
            counts[name] = counts.get(name, 0) + 1
        outcome = {EXIT_PASS: "pass", EXIT_REGRESSION: "REGRESSION", EXIT_ERROR: "ERROR",
                   EXIT_INCONCLUSIVE: "INCONCLUSIVE", EXIT_NOT_COMPARABLE: "NOT COMPARABLE"}
        parts = ", ".join(f"{n} {v.lower()}" for v, n in counts.items())
        return f"{outcome[self.exit_code]} (exit {self.exit_code}): {parts or 'nothing compared'}"


# -- cases ------------------------------------------------------------------------------------
def _case_parts(case: dict[str, Any]) -> dict[str, str]:
    """Label parts: backend, model file name, workload, threads and the parameters that differ
    from the backend defaults the run stored."""
    defaults = case.get("param_defaults") or {}
    parts = {"backend": case["backend"], "model": Path(case["model"]).name,
             "workload": case["workload"]}
    for key, value in (case.get("params") or {}).items():
        if key == "threads" or defaults.get(key, object()) != value:
            parts[key] = f"{key}={value}"
    return parts


def case_label(case: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """A case's label, which [[override]] and [[accepted]] globs match; for an A/B pair, parts
    that differ read `A→B` (threads=1→2)."""
    mine = _case_parts(case)
    if other is None:
        return " ".join(mine.values())
    theirs = _case_parts(other)
    out = []
    for key in dict.fromkeys([*mine, *theirs]):
        a, b = mine.get(key, "–"), theirs.get(key, "–")
        if a == b:
            out.append(a)
        elif a.startswith(f"{key}=") and b.startswith(f"{key}="):
            out.append(f"{a}→{b.removeprefix(key + '=')}")
        else:
            out.append(f"{a}→{b}")
    return " ".join(out)


def case_key(case: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two cases to be compared (the arm of an A/B run included)."""
    return (case["backend"], case.get("model_id") or case["model"], case["workload"],
            json.dumps(case.get("params") or {}, sort_keys=True), case.get("arm"))


def metric_trials(case: dict[str, Any], metric: Metric) -> list[tuple[int, float]]:
    """(trial number, value) of every sample of the metric, in trial order. A serving latency
    has one sample per completed request (ITL: the request's mean gap, since gaps within one
    request are not independent draws)."""
    if metric.phase in serving.LATENCIES:
        out = []
        for r in case.get("requests", []):
            if r.get("status") != "ok":
                continue
            value = serving.request_latencies(r)[metric.phase]
            if metric.phase == "itl":
                value = sum(value) / len(value) if value else None
            if value is not None:
                out.append((r["trial"], value))
        return out
    return [(t["trial"], metric.value(t["n_tokens"], t["duration_ns"])) for t in case.get("trials", [])
            if t["phase"] == metric.phase and t["duration_ns"] > 0]


def metric_values(case: dict[str, Any], metric: Metric) -> list[float]:
    return [value for _, value in metric_trials(case, metric)]


def case_metrics(case: dict[str, Any]) -> list[Metric]:
    """Metrics the case's workload times: prefill and decode, or a serving case's latencies."""
    if case.get("load"):
        return [m for m in METRICS.values() if m.phase in serving.LATENCIES]
    timed = {t["phase"] for t in case.get("trials") or []} | {(case.get("aggregate") or {}).get("phase")}
    if "pg" in timed:  # llama-bench times pp and tg together in its pg test
        return [METRICS["combined"]]
    phases = {"pp": case["n_prompt"] > 0, "tg": case["n_gen"] > 0}
    return [m for m in METRICS.values() if phases.get(m.phase, False)]


def _entries(label: str, bases: list[dict[str, Any]], cur: dict[str, Any], config: GateConfig,
             today: dt.date, paired: bool = False) -> list[Entry]:
    """Entries of one current case against its baseline cases: one (the A arm of an `ab` run,
    `paired`) or the same case in each stored baseline run (run-to-run drift from their spread)."""
    out = []
    for metric in case_metrics(cur):
        th = config.thresholds(label, metric.key)
        cur_values = metric_values(cur, metric)
        if not bases:
            out.append(Entry(label, metric, [], cur_values, th, NO_BASELINE,
                             "no baseline case with the same backend, model, workload and parameters"))
            continue
        ok = [b for b in bases if b["status"] == "ok"]
        base_values = [v for b in ok for v in metric_values(b, metric)]
        if cur["status"] != "ok" or not ok:
            who, c = ("current", cur) if cur["status"] != "ok" else ("baseline", bases[0])
            out.append(Entry(label, metric, base_values, cur_values, th, ERROR,
                             f"{who} case {c['status']}: {c.get('error') or 'no result'}"))
            continue
        if paired:
            trials = [[n for n, _ in metric_trials(c, metric)] for c in (ok[0], cur)]
            paired_here = trials[0] == trials[1]  # a lost trial on either side: unpaired
            result = compare(base_values, cur_values, th, metric.higher_is_better, paired=paired_here)
        else:
            result = compare_history([metric_values(b, metric) for b in ok], cur_values, th,
                                     metric.higher_is_better)
        entry = Entry(label, metric, base_values, cur_values, th, result.verdict, result.reason, result)
        if result.verdict == REGRESSION:
            entry.accepted, entry.expired = config.acceptance(label, metric.key, today)
        out.append(entry)
    return out


# -- fingerprints --------------------------------------------------------------------------------
def _differences(base: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    return [f"{key}: {base.get(key)!r} vs {cur.get(key)!r}" for key in dict.fromkeys([*base, *cur])
            if base.get(key) != cur.get(key)]


def _engine_build(run: dict[str, Any], name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A backend's engine fields in a run's hard fingerprint. A field that an older tokbench left
    out of the fingerprint comes from the engine probe stored in the run's profile when the probe
    reported it (vLLM's probe reported its build, device type and torch version before the
    fingerprint held them)."""
    profile = run.get("profile")
    probed = (profile.get("engines") or {}).get(name) if isinstance(profile, dict) else None
    return {**probed, **fields} if isinstance(probed, dict) else fields


def _unstated(run: dict[str, Any]) -> list[str]:
    """Hard fields an imported run's file does not state (its fingerprint's "unknown")."""
    return list((run.get("fingerprint") or {}).get("unknown") or [])


def tool_of(run: dict[str, Any]) -> str:
    """The tool that measured a run: tokbench, or the source tool of an imported one."""
    return str((run.get("source") or {}).get("tool") or "tokbench")


def _hard_differences(baseline: dict[str, Any], current: dict[str, Any], across_tools: bool = False
                      ) -> tuple[list[str], list[str]]:
    """(hard fields that differ; fields that cannot be checked: engine fields only one run recorded,
    and fields an imported run's file does not state). `across_tools`: the engines are what is
    compared, so their builds are reported, not refused."""
    base, cur = baseline["fingerprint"].get("hard", {}), current["fingerprint"].get("hard", {})
    unstated = {k: side for side, run in (("baseline", baseline), ("current", current))
                for k in _unstated(run)}
    skipped = [*unstated, "engines"]  # engines: field by field below
    diffs = _differences({k: v for k, v in base.items() if k not in skipped},
                         {k: v for k, v in cur.items() if k not in skipped})
    tools = {"baseline": tool_of(baseline), "current": tool_of(current)}
    unrecorded = [f"{k} is not stated by the {side} run's file ({tools[side]}), so it is not checked"
                  for k, side in unstated.items()]
    if across_tools or "engines" in unstated:
        return diffs, unrecorded
    a, b = base.get("engines"), cur.get("engines")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return diffs + _differences({"engines": a}, {"engines": b}), unrecorded
    for name in [n for n in a if n in b]:
        x_fields, y_fields = _engine_build(baseline, name, a[name]), _engine_build(current, name, b[name])
        for field_name in dict.fromkeys([*a[name], *b[name]]):
            if field_name not in x_fields or field_name not in y_fields:
                side, value = (("baseline", y_fields[field_name]) if field_name not in x_fields
                               else ("current", x_fields[field_name]))
                unrecorded.append(f"{name} {field_name} is not recorded in the {side} run "
                                  f"(an older tokbench; the other run has {value!r}), so it is not checked")
            elif x_fields[field_name] != y_fields[field_name]:
                diffs.append(f"{name} {field_name}: {x_fields[field_name]!r} vs {y_fields[field_name]!r}")
    return diffs, unrecorded


def _engine_line(run: dict[str, Any]) -> str:
    engines = (run.get("fingerprint") or {}).get("hard", {}).get("engines") or {}
    builds = [" ".join(str(v) for v in (e.get("engine"), e.get("engine_version"),
                                        e.get("build_commit") or e.get("ggml_commit")) if v)
              for e in engines.values() if isinstance(e, dict)]
    return f"{tool_of(run)} ({'; '.join(builds) or 'engine not stated'})"


def check_fingerprints(baseline: dict[str, Any], current: dict[str, Any], across_tools: bool = False
                       ) -> tuple[str | None, list[str]]:
    """(why not comparable, or None; warnings: soft fields that differ, and hard fields that cannot
    be checked). `across_tools` (compare): runs measured by different tools (tokbench, or an imported
    run's tool) may differ in their engines, which is what such a comparison shows, and say so."""
    fb, fc = baseline["run"].get("fingerprint"), current["run"].get("fingerprint")
    if not fb or not fc:
        which = "baseline" if not fb else "current"
        return f"the {which} run has no fingerprint; re-run it with this tokbench", []
    across = across_tools and tool_of(baseline["run"]) != tool_of(current["run"])
    hard, unrecorded = _hard_differences(baseline["run"], current["run"], across_tools=across)
    if hard:
        return "hard fingerprint fields differ (baseline vs current): " + "; ".join(hard), []
    soft_a, soft_b = fb.get("soft", {}), fc.get("soft", {})
    both = [k for k in soft_a if k in soft_b]  # an imported run's file states few of them
    warnings = [f"soft fingerprint field differs, {d}"
                for d in _differences({k: soft_a[k] for k in both}, {k: soft_b[k] for k in both})]
    warnings += [f"hard fingerprint field {u}" for u in unrecorded]
    if across:
        warnings.append(f"across tools: {_engine_line(baseline['run'])} vs {_engine_line(current['run'])}; "
                        "the ratio includes the tools' own differences")
    return None, warnings


def aggregate_only(doc: dict[str, Any]) -> str | None:
    """Why an imported run cannot be a gate baseline or current run: its file kept no samples."""
    source = doc["run"].get("source") or {}
    if source and not source.get("samples", True):
        return (f"run {doc['run']['run_id']} was imported from {source.get('format')}, which keeps only "
                "aggregates: the gate needs per-trial samples (import a format that keeps them, such as "
                "llama-bench -o json or jsonl, or vllm bench serve --save-detailed)")
    return None


# -- entry points ----------------------------------------------------------------------------------
def _run_info(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    run = doc["run"]
    return {"run_id": run["run_id"], "command": run.get("command"), "git_commit": run.get("git_commit"),
            **extra}


def _baseline_info(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest baseline run's info, and every baseline run id when there are several."""
    info = _run_info(docs[-1])
    if len(docs) > 1:
        info["runs"] = [d["run"]["run_id"] for d in docs]
    return info


def compare_runs(baselines: list[dict[str, Any]], current: dict[str, Any], config: GateConfig,
                 strict: bool = False, today: dt.date | None = None,
                 missing: str | None = None) -> GateReport:
    """Every case of the current run against the cases with the same key in the baseline runs
    (oldest first). Without a baseline (`missing` says why) every entry is NOT COMPARABLE, so
    reports still list them."""
    today = today or dt.date.today()
    report = GateReport("gate", _baseline_info(baselines) if baselines else {"run_id": None},
                        _run_info(current), strict=strict, config=config.source)
    if not baselines:
        report.not_comparable = missing or "no baseline"
    for doc in [*baselines, current]:
        if aggregate_only(doc):
            report.not_comparable = aggregate_only(doc)
            break
    for doc in baselines if not report.not_comparable else []:
        refused, warnings = check_fingerprints(doc, current)
        if refused:
            report.not_comparable = (f"baseline run {doc['run']['run_id']}: {refused}"
                                     if len(baselines) > 1 else refused)
            break
        report.warnings += [w for w in warnings if w not in report.warnings]
    index: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for doc in baselines:
        for c in doc["cases"]:
            index.setdefault(case_key(c), []).append(c)
    for case in current["cases"]:
        label = case_label(case)
        if report.not_comparable:
            report.entries += [Entry(label, m, [], metric_values(case, m), config.thresholds(label, m.key),
                                     NOT_COMPARABLE, report.not_comparable) for m in case_metrics(case)]
            continue
        report.entries += _entries(label, index.get(case_key(case), []), case, config, today)
    unmatched = len([e for e in report.entries if e.verdict == NO_BASELINE])
    if unmatched and not report.not_comparable:
        report.warnings.append(f"{unmatched} case × metric(s) have no baseline; refresh the baseline "
                               "if the suite changed")
    _expiry_warnings(report)
    return report


def compare_arms(run: dict[str, Any], config: GateConfig, strict: bool = False,
                 arms: tuple[str, str] | None = None, today: dt.date | None = None) -> GateReport:
    """Arm B of an A/B run against arm A: the i-th B case against the i-th A case."""
    today = today or dt.date.today()
    a_cases = [c for c in run["cases"] if c.get("arm") == "A"]
    b_cases = [c for c in run["cases"] if c.get("arm") == "B"]
    spec = arms or _arm_specs(run)
    report = GateReport("ab", _run_info(run, arm="A", spec=spec[0]), _run_info(run, arm="B", spec=spec[1]),
                        strict=strict, config=config.source)
    if not a_cases or len(a_cases) != len(b_cases):
        report.not_comparable = (f"run {run['run']['run_id']} is not an A/B run (cases with arm A and B); "
                                 "give --baseline")
        return report
    for a, b in zip(a_cases, b_cases, strict=True):
        report.entries += _entries(case_label(a, b), [a], b, config, today, paired=True)
    _expiry_warnings(report)
    return report


def _arm_specs(run: dict[str, Any]) -> tuple[str, str]:
    """The arm specs, recovered from the stored `tokbench ab` command line when possible."""
    import shlex

    words = shlex.split(run["run"].get("command") or "")
    found = {}
    for flag in ("--a", "--b"):
        if flag in words and words.index(flag) + 1 < len(words):
            found[flag] = words[words.index(flag) + 1]
    return found.get("--a", "A"), found.get("--b", "B")


def _expiry_warnings(report: GateReport) -> None:
    for e in report.entries:
        if e.expired:
            report.warnings.append(
                f"accepted regression for {e.case} {e.metric.key} expired on "
                f"{e.expired.expires.isoformat()} ({e.expired.reason}); it fails the gate again")
