"""Published figures and the hardware catalog: package data (results/data/*.toml), checked on load.

Every figure carries its source (title, date, URL as given), the conditions the article states
and the ones it leaves out (`unstated`), so a report can say what a comparison assumed. Every
device states each specification or names it as unknown; nothing is filled in silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError
from harness.common.toml_files import check_keys, read_toml

METRICS = {
    "decode_tps": "decode tok/s (one sequence)",
    "aggregate_tps": "aggregate tok/s (all concurrent sequences)",
    "memory_bytes": "memory in use",
    "file_bytes": "model file size",
    "ram_min_bytes": "minimum RAM",
    "ram_fits_bytes": "fits in RAM",
}
UNSTATED = ("quant", "engine", "context", "batch", "prompt_length", "output_length", "threads",
            "engine_version", "device")
UNITS = {"tok/s": 1.0, "MB": 1e6, "GB": 1e9}
SPECS = ("bandwidth_gbs", "memory_gb", "tdp_w", "compute")
UNSPECIFIED = "unspecified"

_FIGURE_KEYS = {"id", "model", "model_as_given", "device", "device_as_given", "engine", "quant",
                "roofline_quant", "metric", "value", "value_range", "approximate", "unit", "batch",
                "conditions", "unstated", "sources", "quote"}
_DEVICE_KEYS = {"name", "kind", "match", *SPECS, "unknown", "source", "notes"}


@dataclass(frozen=True)
class Source:
    key: str
    title: str
    date: str
    url: str
    author: str | None = None


@dataclass(frozen=True)
class Figure:
    """One published number, in base units (tok/s or bytes), with its conditions."""

    id: str
    model: str  # catalog name
    model_as_given: str
    device: str  # devices.toml key or "unspecified"
    device_as_given: str
    metric: str
    low: float
    high: float  # == low unless the article gives a range
    unit: str
    conditions: str
    unstated: tuple[str, ...]
    sources: tuple[Source, ...]
    quote: str
    engine: str | None = None
    quant: str | None = None  # as stated; None when unstated
    roofline_quant: str | None = None  # the llama.cpp file type the roofline reads it as
    batch: int | None = None  # as stated; None when unstated (read as 1)
    approximate: bool = False

    @property
    def value(self) -> float:
        """The figure (the middle of a range)."""
        return (self.low + self.high) / 2

    @property
    def shown(self) -> str:
        scale = UNITS[self.unit]
        lo, hi = self.low / scale, self.high / scale
        text = f"{lo:,.6g}" if lo == hi else f"{lo:,.6g}–{hi:,.6g}"
        return ("~" if self.approximate else "") + f"{text} {self.unit}"

    @property
    def quant_for_roofline(self) -> str:
        return self.roofline_quant or self.quant or ""

    @property
    def assumptions(self) -> list[str]:
        """What the article leaves out, and what the comparison assumes instead."""
        out = []
        if "quant" in self.unstated:
            out.append(f"quant not stated: {self.roofline_quant} assumed")
        elif self.roofline_quant and self.roofline_quant != self.quant:
            out.append(f"{self.quant} read as {self.roofline_quant}")
        if "batch" in self.unstated:
            out.append("batch not stated: 1 assumed")
        if "context" in self.unstated:
            out.append("context not stated: KV-cache reads left out (the ceiling is an upper bound)")
        rest = [u for u in self.unstated if u not in ("quant", "batch", "context")]
        if rest:
            out.append("not stated: " + ", ".join(u.replace("_", " ") for u in rest))
        return out


@dataclass(frozen=True)
class Device:
    """A catalog device; None for a specification the vendor does not publish."""

    key: str
    name: str
    kind: str
    bandwidth_gbs: float | None
    memory_gb: float | None
    tdp_w: tuple[float, float] | None  # (low, high); equal for a single figure
    compute: dict[str, float] | None
    source_title: str
    source_url: str
    notes: str
    match: tuple[str, ...] = ()
    measured: bool = False  # the local machine, from a stored profile

    @property
    def tdp_shown(self) -> str:
        if self.tdp_w is None:
            return "unknown"
        lo, hi = self.tdp_w
        return f"{lo:g} W" if lo == hi else f"{lo:g}–{hi:g} W"


def _data(name: str) -> Path:
    return Path(str(resources.files("results") / "data" / name))


def _need(table: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = table.get(key)
    if value is None or value == "" or not isinstance(value, kind):
        raise TokbenchError(f"{where}: `{key}` is missing or not a {getattr(kind, '__name__', kind)}; "
                            "add it (see the file's header)")
    return value


def load_figures(path: Path | None = None, devices: dict[str, Device] | None = None) -> list[Figure]:
    """The published figures, each checked: known device, metric, unit and sources. Whether the
    model and quant are ones tokbench knows is checked by the reports layer, which owns the catalog."""
    path = path or _data("published.toml")
    devices = devices if devices is not None else load_devices()
    doc = read_toml(path, "published-figures file")
    check_keys(doc, {"schema", "source", "figure"}, str(path))
    sources = {}
    for key, table in (doc.get("source") or {}).items():
        where = f"{path}: source {key!r}"
        check_keys(table, {"title", "date", "url", "author"}, where)
        sources[key] = Source(key, _need(table, "title", where, str), _need(table, "date", where, str),
                              _need(table, "url", where, str), table.get("author"))
    figures, seen = [], set()
    for n, table in enumerate(doc.get("figure") or []):
        where = f"{path}: figure {table.get('id', n)!r}"
        check_keys(table, _FIGURE_KEYS, where)
        fid = _need(table, "id", where, str)
        if fid in seen:
            raise TokbenchError(f"{where}: duplicate id; each figure is recorded once")
        seen.add(fid)
        model, device, metric, unit = (_need(table, k, where, str)
                                       for k in ("model", "device", "metric", "unit"))
        if device != UNSPECIFIED and device not in devices:
            raise TokbenchError(f"{where}: device {device!r} is not in devices.toml ({', '.join(devices)})")
        if metric not in METRICS or unit not in UNITS:
            raise TokbenchError(f"{where}: metric must be one of {', '.join(METRICS)} and unit one of "
                                f"{', '.join(UNITS)}")
        unstated = tuple(_need(table, "unstated", where, list)) if table.get("unstated") else ()
        if "unstated" not in table or any(u not in UNSTATED for u in unstated):
            raise TokbenchError(f"{where}: `unstated` must list what the article leaves out, from "
                                f"{', '.join(UNSTATED)} ([] when nothing)")
        quant, roofline_quant = table.get("quant"), table.get("roofline_quant")
        if ("quant" in unstated) == (quant is not None):
            raise TokbenchError(f"{where}: give `quant` when it is stated, or list it in `unstated`")
        if "value_range" in table:
            low, high = (float(v) for v in table["value_range"])
        else:
            low = high = float(_need(table, "value", where, (int, float)))
        refs = _need(table, "sources", where, list)
        missing = [r for r in refs if r not in sources]
        if missing:
            raise TokbenchError(f"{where}: unknown source {missing[0]!r}; define it under [source]")
        scale = UNITS[unit]
        figures.append(Figure(
            id=fid, model=model, model_as_given=_need(table, "model_as_given", where, str),
            device=device, device_as_given=_need(table, "device_as_given", where, str), metric=metric,
            low=low * scale, high=high * scale, unit=unit,
            conditions=_need(table, "conditions", where, str), unstated=unstated,
            sources=tuple(sources[r] for r in refs), quote=_need(table, "quote", where, str),
            engine=table.get("engine"), quant=quant, roofline_quant=roofline_quant,
            batch=table.get("batch"), approximate=bool(table.get("approximate", False)),
        ))
    return figures


def load_devices(path: Path | None = None) -> dict[str, Device]:
    """The hardware catalog: each spec given, or named in `unknown`, with a source."""
    path = path or _data("devices.toml")
    doc = read_toml(path, "device catalog")
    check_keys(doc, {"schema", "device"}, str(path))
    out = {}
    for key, table in (doc.get("device") or {}).items():
        where = f"{path}: device {key!r}"
        check_keys(table, _DEVICE_KEYS, where)
        unknown = table.get("unknown")
        if not isinstance(unknown, list) or any(u not in SPECS for u in unknown):
            raise TokbenchError(f"{where}: `unknown` must list the specs not published, from "
                                f"{', '.join(SPECS)} ([] when all are known)")
        for spec in SPECS:
            if (spec in table) == (spec in unknown):
                raise TokbenchError(f"{where}: give `{spec}` or list it in `unknown`, not both or neither")
        source = _need(table, "source", where, dict)
        tdp = table.get("tdp_w")
        out[key] = Device(
            key=key, name=_need(table, "name", where, str), kind=_need(table, "kind", where, str),
            bandwidth_gbs=table.get("bandwidth_gbs"), memory_gb=table.get("memory_gb"),
            tdp_w=None if tdp is None else (tuple(tdp) if isinstance(tdp, list) else (tdp, tdp)),
            compute=table.get("compute"), source_title=_need(source, "title", where + " source", str),
            source_url=_need(source, "url", where + " source", str),
            notes=_need(table, "notes", where, str), match=tuple(table.get("match", ())),
        )
    return out


def local_device(run: dict[str, Any]) -> Device:
    """This machine as a device, from a stored run's profile: measured copy bandwidth, RAM. An
    imported run's machine is the one its file names (its CPU, where stated), with no bandwidth."""
    profile = run.get("profile") or {}
    bw = (profile.get("memory_bandwidth") or {}).get("copy_gbps")
    source = run.get("source")
    stated = ((run.get("fingerprint") or {}).get("hard") or {}).get("cpu_brand") if source else None
    name = profile.get("cpu_brand") or stated or run.get("host") or "unknown CPU"
    cores = profile.get("physical_cores")
    note = ("bandwidth measured by tokbench's copy probe (GB/s read + written)" if bw else
            f"imported from {source.get('tool')}: no bandwidth measured, no roofline" if source else
            "no bandwidth stored (the run used --no-bandwidth): no roofline")
    where = f"{source.get('tool')}'s machine" if source else "this machine"
    return Device(
        key=f"local:{run['run_id']}", name=f"{where}: {name}" + (f", {cores} cores" if cores else ""),
        kind="measured", bandwidth_gbs=bw, memory_gb=(profile.get("ram_bytes") or 0) / 1e9 or None,
        tdp_w=None, compute=None, source_title=f"run {run['run_id']} profile", source_url="",
        notes=note, measured=True,
    )


def device_for(name: str, devices: dict[str, Device]) -> Device | None:
    """The catalog device a GPU or chip name from a profile identifies (by `match`)."""
    for device in devices.values():
        if any(m.lower() in name.lower() for m in device.match):
            return device
    return None
