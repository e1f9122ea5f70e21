"""Measured vs published vs the physical limit, as pandas tables built from stored runs.

Reads stored runs (a run dict and its results.frames.cases_frame) and the packaged registry;
never runs anything. Every table keeps failed cases and says what a figure assumed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from harness.common.errors import TokbenchError
from harness.models.catalog import CATALOG, TINY, lookup
from reports.roofline import (
    DecodeShape,
    bandwidth_ceiling,
    compute_ceiling,
    decode_context,
    kv_bytes_per_value,
    shape_from_catalog,
    shape_from_gguf,
)
from results.reference import Device, Figure, device_for, load_devices, load_figures, local_device

#: Heaviest first: for a claim, the heaviest of these whose ceiling it stays under.
QUANT_LADDER = ("BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
GPU_BACKENDS = ("vllm",)
SPEED_METRICS = ("decode_tps", "aggregate_tps")


@lru_cache(maxsize=1)
def reference() -> tuple[list[Figure], dict[str, Device]]:
    """The packaged registry and device catalog (loaded once), each figure's model checked
    against the model catalog and its quant (or roofline_quant) against llama.cpp's file types."""
    from harness.models.quant_mix import FILE_TYPES

    devices = load_devices()
    figures = load_figures(devices=devices)
    check_figures(figures, FILE_TYPES)
    return figures, devices


def check_figures(figures: list[Figure], file_types: Any) -> None:
    """Published figures name catalog models and a quant the roofline can price."""
    for f in figures:
        where = f"published figure {f.id!r}"
        if f.model not in CATALOG:
            raise TokbenchError(f"{where}: model {f.model!r} is not in the catalog ({', '.join(CATALOG)})")
        if (f.quant or "").upper() not in file_types and (f.roofline_quant or "").upper() not in file_types:
            raise TokbenchError(f"{where}: `roofline_quant` must name a llama.cpp file type "
                                f"({', '.join(file_types)}) when quant is unstated or not one")


@dataclass
class RunData:
    """One stored run, as the report reads it."""

    run: dict[str, Any]
    cases: pd.DataFrame  # results.frames.cases_frame

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])


def batch_of(row: pd.Series | dict[str, Any]) -> int:
    """Concurrent sequences of a case (param_batch; 1 when the run has none)."""
    value = row.get("param_batch")
    return 1 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


# -- model shapes of measured cases ----------------------------------------------------------------
@lru_cache(maxsize=64)
def _gguf_shape(path: str, model_id: str) -> tuple[DecodeShape | None, str]:
    """The stored model file's shape, if the file is still the one measured (size + header hash)."""
    from harness.models.gguf_header import read_header

    file = Path(path)
    size = model_id.split("-", 1)[0]
    if file.is_dir():
        return None, "Hugging Face directory: bytes/token are derived for GGUF files and synth: models"
    if not file.is_file() or str(file.stat().st_size) != size:
        return None, f"model file {path} is no longer there as measured: bytes/token unknown"
    with file.open("rb") as fh:
        digest = hashlib.sha256(fh.read(read_header(file).data_offset)).hexdigest()[:16]
    if model_id != f"{size}-{digest}":
        return None, f"model file {path} changed since it was measured: bytes/token unknown"
    return shape_from_gguf(file), "from the GGUF's tensors"


def catalog_model(source: str, stored_quant: str | None = None) -> tuple[str, str] | None:
    """(catalog name, quant) of a `synth:NAME@QUANT` source, preferring the quant the case stored
    (F16 when a backend read it in HF layout); None for other sources."""
    if not source.startswith("synth:"):
        return None
    from harness.models.quant_mix import FILE_TYPES
    from harness.models.synthetic import parse_source

    name, quant = parse_source(source[6:])
    stored = (stored_quant or "").upper()
    if name.lower() not in CATALOG and name.lower() not in TINY:
        return None
    return name.lower(), stored if stored in FILE_TYPES else quant.upper()


def case_shape(row: pd.Series) -> tuple[DecodeShape | None, str]:
    """The case's decode shape and where it came from (catalog shapes for synthetic models,
    the stored model file's own tensors otherwise), or None and why not."""
    source = str(row["model"])
    if source.startswith("synth:"):
        from harness.models.synthetic import parse_source

        found = catalog_model(source, row.get("quant"))
        if found is None:
            return None, f"synthetic model {parse_source(source[6:])[0]!r} is not in the catalog"
        name, quant = found
        try:
            return shape_from_catalog(lookup(name), quant), f"catalog {name}@{quant}"
        except TokbenchError as exc:
            return None, str(exc)
    if row.get("model_path") and row.get("model_id"):
        return _gguf_shape(str(row["model_path"]), str(row["model_id"]))
    return None, "no model file recorded: bytes/token unknown"


def case_device(backend: str, run: dict[str, Any], devices: dict[str, Device]) -> Device:
    """Where a case ran: the catalog GPU (vLLM) or Apple chip (MLX) named in the stored profile,
    else this machine with its measured bandwidth."""
    profile = run.get("profile") or {}
    names = []
    if backend in GPU_BACKENDS:
        names = [g.get("name", "") for g in profile.get("gpus") or []]
    elif backend == "mlx":
        names = [(profile.get("apple") or {}).get("machdep.cpu.brand_string") or ""]
    for name in names:
        found = device_for(name, devices) if name else None
        if found:
            return found
    if names:
        return Device(f"unknown:{names[0]}", names[0] or "unknown accelerator", "gpu", None, None, None,
                      None, "", "", "not in the device catalog: no bandwidth, no roofline")
    return local_device(run)


def fmt_bytes(n: float | None) -> str:
    if n is None or pd.isna(n):
        return "–"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.0%}"


# -- measured ---------------------------------------------------------------------------------------
def measured_roofline(runs: list[RunData], devices: dict[str, Device]) -> pd.DataFrame:
    """One row per decode case: measured tok/s against the bandwidth ceiling of where it ran.
    Failed cases keep their row, with the error."""
    rows = []
    for rd in runs:
        l3 = ((rd.run.get("profile") or {}).get("caches") or {}).get("l3")
        for _, row in rd.cases[rd.cases["phase"] == "tg"].iterrows():
            batch = batch_of(row)
            device = case_device(row["backend"], rd.run, devices)
            shape, how = case_shape(row)
            context = decode_context(int(row["n_prompt"]), int(row["n_gen"]), int(row["n_depth"]))
            bpv = (kv_bytes_per_value(row.get("param_cache_type_k"))
                   + kv_bytes_per_value(row.get("param_cache_type_v"))) / 2
            step = shape.step_bytes(context, batch, bpv) if shape else math.nan
            ceiling = (bandwidth_ceiling(device.bandwidth_gbs, step, batch)
                       if shape and device.bandwidth_gbs else math.nan)
            tps = row["tps_median"]
            notes = [] if shape else [how]
            resident = bool(shape and l3 and shape.weight_bytes(batch) <= l3)
            if resident:
                notes.append(f"weights ({fmt_bytes(shape.weight_bytes(batch))}) fit in the "
                             f"{l3 / 2**20:.0f} MiB L3 cache: DRAM bandwidth is not the bound")
            if row["status"] != "ok":
                notes.insert(0, f"{row['status']}: {row['error'] or 'no result'}")
            rows.append({
                "run": rd.run_id, "backend": row["backend"], "model": row["model"],
                "catalog": "@".join(catalog_model(row["model"], row["quant"]) or ()),
                "quant": row["quant"], "test": row["test"], "batch": batch,
                "n_depth": int(row["n_depth"]), "context": context, "status": row["status"], "tps": tps,
                "tps_per_seq": tps / batch if not pd.isna(tps) else math.nan,
                "tps_ci_low": row["tps_ci_low"], "tps_ci_high": row["tps_ci_high"],
                "bytes_per_token": step / batch,
                "weight_bytes": shape.weight_bytes(batch) if shape else math.nan,
                "shape_from": how, "device": device.name, "device_key": device.key,
                "bandwidth_gbs": device.bandwidth_gbs or math.nan, "ceiling_tps": ceiling,
                "fraction": tps / ceiling if not pd.isna(ceiling) else math.nan,
                "peak_rss_bytes": row["peak_rss_bytes"], "model_file_bytes": row["model_file_bytes"],
                "cache_resident": resident, "notes": "; ".join(notes),
            })
    return pd.DataFrame(rows)


# -- published ----------------------------------------------------------------------------------------
def _ceiling(figure: Figure, device: Device, quant: str) -> tuple[float, float, str]:
    """(bytes/token, ceiling tok/s, bound) for a figure's model at a quant on its device."""
    shape = shape_from_catalog(lookup(figure.model), quant)
    batch = figure.batch or 1
    step = shape.step_bytes(0, batch)
    if not device.bandwidth_gbs:
        return step / batch, math.nan, "unknown"
    ceiling, bound = bandwidth_ceiling(device.bandwidth_gbs, step, batch), "bandwidth"
    peak = (device.compute or {}).get("bf16_tflops") if quant in ("BF16", "F16") else None
    if peak and compute_ceiling(peak, shape.active_params) < ceiling:
        ceiling, bound = compute_ceiling(peak, shape.active_params), "compute"
    return step / batch, ceiling, bound


def published_roofline(figures: list[Figure], devices: dict[str, Device]) -> pd.DataFrame:
    """Each published speed against its device's ceiling at its (stated or assumed) quant."""
    rows = []
    for f in (f for f in figures if f.metric in SPEED_METRICS):
        device = devices.get(f.device)
        quant = f.quant_for_roofline
        if device is None:
            per_token, ceiling, bound = math.nan, math.nan, "unknown"
        else:
            per_token, ceiling, bound = _ceiling(f, device, quant)
        heaviest = ""
        if device is not None and device.bandwidth_gbs:
            heaviest = next((q for q in QUANT_LADDER if f.high <= _ceiling(f, device, q)[1]), "none")
        over = not pd.isna(ceiling) and f.high > ceiling
        verdict = ("unknown: no bandwidth for the device" if pd.isna(ceiling)
                   else "OVER THE CEILING" if over else "within")
        rows.append({
            "figure": f.id, "model": f.model_as_given, "catalog": f.model, "device": f.device_as_given,
            "device_key": f.device, "engine": f.engine or "not stated",
            "quant": f.quant if f.quant else f"{quant} (assumed)", "roofline_quant": quant,
            "metric": f.metric, "batch": f.batch or 1, "claimed": f.shown, "claimed_low": f.low,
            "claimed_high": f.high, "bandwidth_gbs": device.bandwidth_gbs if device else math.nan,
            "bytes_per_token": per_token, "ceiling_tps": ceiling, "bound": bound,
            "fraction_low": f.low / ceiling if not pd.isna(ceiling) else math.nan,
            "fraction_high": f.high / ceiling if not pd.isna(ceiling) else math.nan,
            "verdict": verdict, "heaviest_quant_within": heaviest,
            "assumptions": "; ".join(f.assumptions),
        })
    return pd.DataFrame(rows)


def closest_to_limit(published: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """Best fraction of the ceiling per engine, published and measured."""
    rows = []
    for engine, group in published.dropna(subset=["fraction_high"]).groupby("engine"):
        best = group.loc[group["fraction_high"].idxmax()]
        rows.append({"engine": engine, "source": "published", "best fraction": best["fraction_high"],
                     "figure": best["figure"], "claims": len(group)})
    if not measured.empty:
        usable = measured[~measured["cache_resident"]].dropna(subset=["fraction"])
        for backend, group in usable.groupby("backend"):
            best = group.loc[group["fraction"].idxmax()]
            rows.append({"engine": backend, "source": "measured", "best fraction": best["fraction"],
                         "figure": f"{best['model']} {best['test']}", "claims": len(group)})
    out = pd.DataFrame(rows, columns=["engine", "source", "best fraction", "figure", "claims"])
    return out.sort_values("best fraction", ascending=False, ignore_index=True)


# -- projection ----------------------------------------------------------------------------------------
def _local_fraction(measured: pd.DataFrame, figure: Figure) -> tuple[float, str] | None:
    """The measured fraction that best stands for the figure: same catalog model and quant, then
    same model, then the median over this run's decode cases; same batch only."""
    usable = measured[(measured["status"] == "ok") & measured["fraction"].notna()
                      & ~measured["cache_resident"] & (measured["batch"] == (figure.batch or 1))]
    if usable.empty:
        return None
    exact = usable[usable["catalog"] == f"{figure.model}@{figure.quant_for_roofline}"]
    same = usable[usable["catalog"].str.startswith(f"{figure.model}@")]
    for subset, how in ((exact, "same model and quant"), (same, "same model")):
        if not subset.empty:
            best = subset.loc[subset["fraction"].idxmax()]
            return float(best["fraction"]), f"{how}: {best['model']} {best['test']}"
    return float(usable["fraction"].median()), f"median of {len(usable)} measured decode case(s)"


def projection(measured: pd.DataFrame, published: pd.DataFrame, figures: list[Figure]) -> pd.DataFrame:
    """Predicted tok/s on each published figure's device = this machine's fraction of its ceiling
    × that device's ceiling, beside the published figure."""
    by_id = {f.id: f for f in figures}
    rows = []
    if measured.empty:
        return pd.DataFrame()
    for _, p in published.dropna(subset=["ceiling_tps"]).iterrows():
        figure = by_id[p["figure"]]
        found = _local_fraction(measured, figure)
        if found is None:
            continue
        fraction, how = found
        predicted = fraction * p["ceiling_tps"]
        engines = ", ".join(sorted(measured["backend"].unique()))
        rows.append({
            "figure": p["figure"], "device": p["device"], "engine": p["engine"], "quant": p["quant"],
            "published": p["claimed"], "published_tps": figure.value, "local_fraction": fraction,
            "fraction_from": how, "predicted_tps": predicted,
            "published_over_predicted": figure.value / predicted,
            "assumptions": f"bandwidth-bound; the device reaches the same fraction of its ceiling as "
                           f"{engines} here; " + p["assumptions"],
        })
    return pd.DataFrame(rows)


# -- memory ---------------------------------------------------------------------------------------------
def _fits(need: float, device: Device) -> str:
    if not device.memory_gb:
        return "unknown"
    return "fits" if need <= device.memory_gb * 1e9 else "does not fit"


def memory_table(measured: pd.DataFrame, figures: list[Figure], devices: list[Device]) -> pd.DataFrame:
    """Each memory requirement (measured peak RSS; published RAM and memory figures; file sizes)
    with a fits / does not fit verdict per device, and a check against the predicted file size."""
    from harness.models.synthetic import predicted_size

    published_ram = {(f.model, f.quant_for_roofline): f for f in figures
                     if f.metric in ("ram_min_bytes", "memory_bytes")}
    rows = []
    if not measured.empty:
        ok = measured[(measured["status"] == "ok") & measured["peak_rss_bytes"].notna()]
        for (model, test), group in ok.groupby(["model", "test"], sort=False):
            peak = float(group["peak_rss_bytes"].max())
            cat = group["catalog"].iloc[0]
            ref = published_ram.get(tuple(cat.split("@"))) if cat else None
            rows.append({"what": f"measured peak RSS: {model} ({test})", "kind": "measured",
                         "model": cat.split("@")[0] if cat else model, "quant": group["quant"].iloc[0],
                         "bytes": peak, "predicted_file_bytes": math.nan,
                         "published_need": ref.shown if ref else "",
                         "check": f"measured ÷ published = {peak / ref.value:.2f}" if ref else ""})
    for f in figures:
        if f.metric not in ("memory_bytes", "ram_min_bytes", "ram_fits_bytes", "file_bytes"):
            continue
        quant = f.quant_for_roofline
        size = predicted_size(lookup(f.model), quant)
        check = ""
        if f.metric == "file_bytes":
            check = f"predicted {fmt_bytes(size)} (published ÷ predicted {f.value / size:.3f})"
        elif f.value < size:
            check = (f"BELOW the {quant} model file alone ({fmt_bytes(size)}): weights not counted, "
                     "or another quant")
        rows.append({"what": f"{f.model_as_given}: {f.conditions} ({f.device_as_given})",
                     "kind": f.metric, "model": f.model, "quant": f.quant or f"{quant} (assumed)",
                     "bytes": f.value, "predicted_file_bytes": size, "published_need": f.shown,
                     "check": check})
    out = pd.DataFrame(rows, columns=["what", "kind", "model", "quant", "bytes", "predicted_file_bytes",
                                      "published_need", "check"])
    for device in devices:
        out[device.name] = [_fits(b, device) for b in out["bytes"]]
    return out


def ceiling_curve(figure: Figure, device: Device, batches: list[int]) -> pd.DataFrame:
    """The figure's ceiling (aggregate tok/s) at each batch size, for the scaling plot."""
    rows = []
    for b in batches:
        f = Figure(**{**figure.__dict__, "batch": b})
        rows.append({"batch": b, "ceiling_tps": _ceiling(f, device, figure.quant_for_roofline)[1]})
    return pd.DataFrame(rows)


def report_devices(runs: list[RunData], devices: dict[str, Device]) -> list[Device]:
    """The catalog devices, then each run's machine (deduplicated by name)."""
    local: dict[str, Device] = {}
    for rd in runs:
        d = local_device(rd.run)
        local.setdefault(d.name, d)
    return [*devices.values(), *local.values()]
