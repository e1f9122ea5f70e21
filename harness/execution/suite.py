"""Suites: models × workloads × parameter grids, from the command line or a TOML file.

The grid is expanded models-outermost and load parameters before context parameters, and a
suite keeps the cases of one model load together (first appearance first), the order that
reloads models least (llama-bench's order): the runner serves each such run of cases from one
worker.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from backends.registry import canonical, load_class, spec_for
from harness.common.errors import TokbenchError
from harness.common.serving import parse_slo
from harness.common.toml_files import check_keys, read_toml
from harness.execution.params import PARAMS
from harness.execution.workloads import AnyWorkload, parse_workload

DEFAULT_REPETITIONS = 5
DEFAULT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Case:
    """One backend × model × workload × parameter combination."""

    backend: str
    model: str
    workload: AnyWorkload
    params: tuple[tuple[str, Any], ...]

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def label(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.params if k == "threads")
        return f"{self.backend} {Path(self.model).name} {self.workload.name} {shown}".strip()


_CLIENT_SIDE = ("ignore_eos", "client_procs")  # what the load client does: no server restart


def load_key(case: Case) -> tuple[Any, ...]:
    """What one loaded model serves: backend, model and every parameter that reloads it (for a
    server tokbench starts, every engine parameter: the server is started with them)."""
    restart_all = load_class(spec_for(case.backend)).serving
    return (case.backend, case.model,
            tuple((k, v) for k, v in case.params
                  if PARAMS[k].reloads_model or (restart_all and k not in _CLIENT_SIDE)))


def reuse_order(cases: list[Case]) -> list[Case]:
    """The cases with each model load's cases together, loads in order of first appearance."""
    groups: dict[tuple[Any, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(load_key(case), []).append(case)
    return [case for group in groups.values() for case in group]


@dataclass
class Suite:
    cases: list[Case]
    repetitions: int = DEFAULT_REPETITIONS
    timeout_s: float = DEFAULT_TIMEOUT_S
    warmup: bool = True
    seed: int = 42
    python: dict[str, str] = field(default_factory=dict)  # backend → worker interpreter
    name: str = "cli"
    isolate: bool = False  # one worker per case (a model load each), instead of one per load
    requests: int | None = None  # serving loads that name no count or duration: this many
    slo: dict[str, float] = field(default_factory=dict)  # ms; goodput is judged against them
    force: bool = False  # run cases the memory pre-check says cannot fit

    def __post_init__(self) -> None:
        search = next((c.workload for c in self.cases if getattr(c.workload, "kind", "") == "capacity"),
                      None)
        if search is not None and not self.slo:
            raise TokbenchError(f"workload {search.name} searches for the load that meets an SLO: "
                                "give one, e.g. --slo ttft=500ms,tpot=50ms")
        self.cases = reuse_order([
            Case(c.backend, c.model, c.workload.with_requests(self.requests), c.params)
            if c.workload.serving else c for c in self.cases])


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def default_repetitions(workloads: list[AnyWorkload]) -> int:
    """Trials per case when none are asked for: one pass of a serving load (it holds hundreds of
    requests), DEFAULT_REPETITIONS of token workloads."""
    return 1 if workloads and all(w.serving for w in workloads) else DEFAULT_REPETITIONS


def _check_kinds(classes: dict[str, Any], workloads: list[AnyWorkload], params: dict[str, list[Any]],
                 where: str) -> None:
    """Serving loads need a server backend and token workloads an engine; required parameters."""
    for name, cls in classes.items():
        wrong = next((w for w in workloads if w.serving != cls.serving), None)
        if wrong is not None and cls.serving:
            raise TokbenchError(f"{where}: backend {name} runs serving workloads such as "
                                f"c16:in512:out128, not {wrong.name}")
        if wrong is not None:
            raise TokbenchError(f"{where}: workload {wrong.name} is a serving load: use a server "
                                "backend (openai --url …, llama.cpp-server, vllm-server, mlx-server)")
        for key in cls.required:
            if not params.get(key):
                flag = PARAMS[key].flags[-1]
                raise TokbenchError(f"{where}: backend {name} needs {flag}, e.g. "
                                    f"{flag} http://127.0.0.1:8000/v1")


def expand(backends: list[str], models: list[str], workloads: list[AnyWorkload],
           params: dict[str, list[Any]], where: str) -> list[Case]:
    """The grid of cases; unset parameters take each backend's defaults. With several backends a
    parameter applies to those that take it (engine flags differ); one no backend takes is an error."""
    cases = []
    classes = {canonical(b): load_class(spec_for(canonical(b))) for b in backends}
    _check_kinds(classes, workloads, params, where)
    taken = {name: cls.defaults for name, cls in classes.items()}
    unknown = [p for p in params if not any(p in defaults for defaults in taken.values())]
    if unknown:
        raise TokbenchError(
            f"{where}: backend {', '.join(taken)} does not take parameter(s) {', '.join(unknown)}; "
            + "; ".join(f"{name} takes {', '.join(d)}" for name, d in taken.items())
        )
    for name, defaults in taken.items():
        grid = {k: params.get(k) or [defaults[k]] for k in defaults}
        if grid.get("threads") == [None]:
            grid["threads"] = [physical_cores()]
        order = sorted(grid, key=lambda k: not PARAMS[k].reloads_model)
        for model in models:
            for values in itertools.product(*(grid[k] for k in order)):
                for wl in workloads:
                    cases.append(Case(name, model, wl, tuple(zip(order, values, strict=True))))
    return cases


def expand_quants(models: list[str], quants: list[str] | None, where: str) -> list[str]:
    """Fill `{quant}` in model sources with each quant (model-major order)."""
    if not quants:
        return models
    missing = [m for m in models if "{quant}" not in m]
    if missing:
        raise TokbenchError(
            f"{where}: quants are given but model {missing[0]!r} has no {{quant}} placeholder; "
            'write it like "models/LFM2-1.2B-{quant}.gguf"'
        )
    return [m.replace("{quant}", q) for m in models for q in quants]


# -- suite files ---------------------------------------------------------------------------

_TOP_KEYS = {"name", "repetitions", "timeout", "warmup", "seed", "python", "isolate", "defaults",
             "benchmark", "requests", "slo"}
_GROUP_KEYS = {"backend", "backends", "model", "models", "quants", "workload", "workloads", *PARAMS}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_suite(path: str | Path, requests: int | None = None, slo: dict[str, float] | None = None
               ) -> Suite:
    """Read a suite file; every key is checked, and typos are named with a suggestion. `requests`
    and `slo` (the command line's) win over the file's."""
    path = Path(path)
    doc = read_toml(path, "suite file")
    check_keys(doc, _TOP_KEYS, str(path))
    defaults = doc.get("defaults", {})
    groups = doc.get("benchmark", [])
    if not isinstance(groups, list) or not groups:
        raise TokbenchError(f"{path}: add at least one [[benchmark]] table (models, workloads…)")
    cases: list[Case] = []
    for i, group in enumerate(groups, start=1):
        where = f"{path} [[benchmark]] #{i}"
        merged = {**defaults, **group}
        check_keys(group, _GROUP_KEYS, where)
        check_keys(defaults, _GROUP_KEYS, f"{path} [defaults]")
        backends = _as_list(merged.get("backends", merged.get("backend", "llama.cpp")))
        models = _as_list(merged.get("models", merged.get("model")))
        if models == [None]:
            raise TokbenchError(f"{where}: no model; add models = [\"path.gguf\" or \"pkg:…\"]")
        quants = [str(q) for q in _as_list(merged["quants"])] if "quants" in merged else None
        models = expand_quants([str(m) for m in models], quants, where)
        try:
            workloads = [parse_workload(str(w)) for w in
                         _as_list(merged.get("workloads", merged.get("workload", ["pp512", "tg128"])))]
        except TokbenchError as exc:
            raise TokbenchError(f"{where}: {exc}") from None
        params = {
            k: [PARAMS[k].coerce(v, where) for v in _as_list(merged[k])]
            for k in merged if k in PARAMS
        }
        cases += expand(backends, models, workloads, params, where)
    repetitions = doc.get("repetitions", default_repetitions([c.workload for c in cases]))
    if not isinstance(repetitions, int) or repetitions < 1:
        raise TokbenchError(f"{path}: repetitions must be an integer ≥ 1 (got {repetitions!r})")
    timeout = doc.get("timeout", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise TokbenchError(f"{path}: timeout must be a number of seconds > 0 (got {timeout!r})")
    python = doc.get("python", {})
    if not isinstance(python, dict):
        raise TokbenchError(f"{path}: python must be a table of backend = \"/path/to/python\"")
    file_requests = doc.get("requests")
    if file_requests is not None and (not isinstance(file_requests, int) or file_requests < 1):
        raise TokbenchError(f"{path}: requests must be an integer ≥ 1 (got {file_requests!r})")
    try:
        file_slo = parse_slo(str(doc.get("slo", "")))
    except ValueError as exc:
        raise TokbenchError(f"{path}: {exc}") from None
    requests = requests if requests is not None else file_requests
    slo = slo or file_slo
    return Suite(cases, repetitions, float(timeout), bool(doc.get("warmup", True)),
                 int(doc.get("seed", 42)), {canonical(k): str(v) for k, v in python.items()},
                 str(doc.get("name", path.stem)), bool(doc.get("isolate", False)), requests, slo)
