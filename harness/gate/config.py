"""The gate's thresholds file (`tokbench-gate.toml` in the repository under test).

Top-level limits apply to every case × metric; `[[override]]` tables change them for cases
whose label matches a glob (and optionally one metric), later tables winning; `[[accepted]]`
tables list known regressions with a reason and an expiry date. An accepted regression is still
reported, but does not fail the gate until its date passes; then it is reported as expired.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError
from harness.common.serving import LATENCIES
from harness.common.toml_files import check_keys, read_toml
from harness.gate import DEFAULT_FILE
from harness.gate.statistics import METRICS, Thresholds

_LIMITS = {f.name for f in fields(Thresholds)}
_PERCENT_LIMITS = {"fail", "warn", "max_cv", "run_to_run_cv"}
_TOP_KEYS = _LIMITS | {"override", "accepted"}
_OVERRIDE_KEYS = _LIMITS | {"case", "metric"}
_ACCEPTED_KEYS = {"case", "metric", "reason", "expires"}


@dataclass(frozen=True)
class Acceptance:
    """A known regression: matching entries do not fail the gate until `expires` has passed."""

    case: str  # glob over the case label
    metric: str | None
    reason: str
    expires: dt.date

    def matches(self, label: str, metric: str) -> bool:
        return fnmatch.fnmatchcase(label, self.case) and self.metric in (None, metric)

    def as_dict(self) -> dict[str, str | None]:
        return {"case": self.case, "metric": self.metric, "reason": self.reason,
                "expires": self.expires.isoformat()}


@dataclass(frozen=True)
class _Override:
    case: str
    metric: str | None
    limits: dict[str, Any]


#: Serving latencies are per-request samples, which vary by design (queueing, lengths): their
#: spread is not run noise, so the "too noisy" limit is wider. The noise floor (one typical
#: request's deviation) still keeps changes within that spread from being called.
SERVING_MAX_CV = 0.5


@dataclass
class GateConfig:
    defaults: Thresholds = field(default_factory=Thresholds)
    overrides: list[_Override] = field(default_factory=list)
    accepted: list[Acceptance] = field(default_factory=list)
    source: str = "built-in defaults"

    def thresholds(self, label: str, metric: str) -> Thresholds:
        th = self.defaults
        if METRICS[metric].phase in LATENCIES and th.max_cv == Thresholds.max_cv:
            th = replace(th, max_cv=SERVING_MAX_CV)
        for o in self.overrides:
            if fnmatch.fnmatchcase(label, o.case) and o.metric in (None, metric):
                th = replace(th, **o.limits)
        return th

    def acceptance(self, label: str, metric: str, today: dt.date) -> tuple[Acceptance | None,
                                                                           Acceptance | None]:
        """(active acceptance, expired acceptance) for a case × metric; either may be None."""
        found = [a for a in self.accepted if a.matches(label, metric)]
        active = next((a for a in found if a.expires >= today), None)
        expired = next((a for a in found if a.expires < today), None)
        return active, None if active else expired


def _fraction(value: Any, key: str, where: str) -> float:
    """`"5%"` or 0.05 → 0.05; a bare 5 is refused rather than read as 500%."""
    text = str(value).strip()
    try:
        out = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        out = None
    if out is None or isinstance(value, bool) or not 0 <= out < 1:
        raise TokbenchError(f'{where}: {key} = {value!r} is not a percentage; write it as "5%" or 0.05')
    return out


def _limits(table: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _LIMITS & table.keys():
        value = table[key]
        if key in _PERCENT_LIMITS:
            out[key] = _fraction(value, key, where)
        elif key == "min_trials":
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise TokbenchError(f"{where}: min_trials must be an integer ≥ 2 (got {value!r})")
            out[key] = value
        else:  # alpha, confidence
            if not isinstance(value, float) or not 0 < value < 1:
                raise TokbenchError(f"{where}: {key} must be a number between 0 and 1 (got {value!r})")
            out[key] = value
    return out


def _metric(table: dict[str, Any], where: str) -> str | None:
    metric = table.get("metric")
    if metric is not None and metric not in METRICS:
        raise TokbenchError(f"{where}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def _case(table: dict[str, Any], where: str) -> str:
    case = table.get("case")
    if not isinstance(case, str) or not case:
        raise TokbenchError(f'{where}: add case = "GLOB" matching case labels (e.g. "*tg128*")')
    return case


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise TokbenchError(f"{where}: expires = {value!r} is not a date; write it as 2026-06-30") from None


def load_gate_config(path: str | Path | None) -> GateConfig:
    """The thresholds file at `path`, else ./tokbench-gate.toml when present, else defaults."""
    if path is None:
        if not Path(DEFAULT_FILE).is_file():
            return GateConfig()
        path = DEFAULT_FILE
    path = Path(path)
    doc = read_toml(path, "gate file", "; fix --config or create it")
    check_keys(doc, _TOP_KEYS, str(path))
    defaults = replace(Thresholds(), **_limits(doc, str(path)))
    if defaults.warn > defaults.fail:
        raise TokbenchError(f"{path}: warn ({defaults.warn:.1%}) must not exceed fail ({defaults.fail:.1%})")
    overrides = []
    for i, table in enumerate(doc.get("override", []), start=1):
        where = f"{path} [[override]] #{i}"
        check_keys(table, _OVERRIDE_KEYS, where)
        overrides.append(_Override(_case(table, where), _metric(table, where), _limits(table, where)))
    accepted = []
    for i, table in enumerate(doc.get("accepted", []), start=1):
        where = f"{path} [[accepted]] #{i}"
        check_keys(table, _ACCEPTED_KEYS, where)
        reason = table.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise TokbenchError(f'{where}: add reason = "why this regression is accepted"')
        if "expires" not in table:
            raise TokbenchError(f"{where}: add expires = YYYY-MM-DD (accepted regressions must expire)")
        accepted.append(Acceptance(_case(table, where), _metric(table, where), reason.strip(),
                                   _date(table["expires"], where)))
    return GateConfig(defaults, overrides, accepted, str(path))
