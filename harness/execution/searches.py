"""The runner's side of a searched load (sweep:… / capacity:…): which level to measure next, from
the steps measured so far, and why the search ended. The rules are harness.common.capacity's."""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.common import capacity as rules
from harness.common.serving import summarize
from harness.execution.workloads import SearchLoad, ServingLoad

ERROR_STOP = 0.5  # a step with more failed requests than this ends a sweep


class SearchPlan:
    def __init__(self, search: SearchLoad, slo: dict[str, float]) -> None:
        self.search, self.slo = search, slo
        self.points: list[rules.Point] = []
        self.steps: list[dict[str, Any]] = []  # sweep: name, level, output_tps, ttft_p50
        self.reason: str | None = None
        self.min_requests = (rules.min_requests(search.percentile / 100, search.confidence)
                             if search.kind == "capacity" else 0)

    def next_load(self) -> tuple[float, ServingLoad] | None:
        level = self._next_level()
        return None if level is None else (level, self.search.step(level, self.min_requests))

    def _next_level(self) -> float | None:
        if self.reason:
            return None
        s = self.search
        if s.kind == "sweep":
            if not self.points:
                return 1.0
            last = self.steps[-1]
            self.reason = rules.saturation(self.steps)
            if self.reason is None and last["error_rate"] > ERROR_STOP:
                self.reason = (f"stopped at {last['name']}: {last['error_rate']:.0%} of requests "
                               "failed")
            if self.reason is None and last["level"] >= s.max_level:
                self.reason = f"reached max{s.max_level:g} without saturating"
            return None if self.reason else min(last["level"] * 2, s.max_level)
        js = rules.judgements(self.points, self.slo, s.percentile, s.confidence)
        level = rules.next_capacity_level(js, Counter(p.level for p in self.points), s.by, 1.0,
                                          s.max_level, s.repeats)
        if level is None:
            cap = rules.capacity(self.points, self.slo, s.percentile, s.confidence, s.by, s.max_level)
            self.reason = rules.describe(cap, s.by, s.percentile, self.slo)
        return level

    def observe(self, level: float, load: ServingLoad, records: list[dict[str, Any]],
                wall_s: float) -> None:
        self.points.append(rules.Point(level, records, wall_s, len(self.points)))
        summary = summarize(records, wall_s)
        self.steps.append({"name": load.name.split(":", 1)[0], "level": level,
                           "output_tps": summary["output_tps"],
                           "ttft_p50": summary["ttft"].get("p50", float("nan")),
                           "error_rate": summary["error_rate"]})

    def stop(self, reason: str) -> None:
        self.reason = reason

    def doc(self, search_id: str, level: float) -> dict[str, Any]:
        """What each step stores about its search (cases.sweep)."""
        s = self.search
        doc: dict[str, Any] = {"id": search_id, "kind": s.kind, "search": s.name, "by": s.by,
                               "step": len(self.points), "level": level, "max_level": s.max_level}
        if s.kind == "capacity":
            doc.update(slo=self.slo, percentile=s.percentile, confidence=s.confidence,
                       repeats=s.repeats)
        return doc
