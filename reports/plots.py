"""The report's plots (matplotlib, Agg), drawn from the comparison tables into PNG bytes.

Each function returns None when the runs hold nothing to draw (a depth curve needs at least two
depths of one case), and the report says so instead of showing an empty axis.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure
import matplotlib.patches
import matplotlib.ticker
import pandas as pd

_MEASURED, _PUBLISHED, _CEILING, _OVER = "#1f77b4", "#ff7f0e", "#7f7f7f", "#d62728"
_ENGINE_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1f77b4")


@dataclass(frozen=True)
class Plot:
    key: str  # file stem
    title: str
    caption: str
    png: bytes


def _png(fig: matplotlib.figure.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def speed_by_device(measured: pd.DataFrame, published: pd.DataFrame) -> bytes | None:
    """tok/s per device and engine: published claims and measured medians, with each ceiling."""
    rows = []
    for _, p in published.iterrows():
        rows.append((f"{_short(p['device'], 30)} · {p['engine']} · {p['model']} {p['quant']}",
                     p["claimed_low"], p["claimed_high"], p["ceiling_tps"], "published"))
    ok = measured[measured["status"] == "ok"] if not measured.empty else measured
    for _, m in ok.iterrows():
        model = _short(str(m["model"]).rsplit("/", 1)[-1], 28)
        rows.append((f"{_short(m['device'], 30)} · {m['backend']} · {model} {m['test']}",
                     m["tps_ci_low"] if pd.notna(m["tps_ci_low"]) else m["tps"],
                     m["tps_ci_high"] if pd.notna(m["tps_ci_high"]) else m["tps"], m["ceiling_tps"],
                     "measured", m["tps"]))
    if not rows:
        return None
    fig = matplotlib.figure.Figure(figsize=(10, 0.42 * len(rows) + 1.4))
    ax = fig.subplots()
    for y, row in enumerate(rows):
        _, low, high, ceiling, kind = row[:5]
        color = _MEASURED if kind == "measured" else _PUBLISHED
        mid = row[5] if kind == "measured" else (low + high) / 2
        ax.plot([low, high], [y, y], color=color, lw=3, alpha=0.6)
        ax.plot([mid], [y], marker="*" if kind == "measured" else "o", color=color, ms=10)
        if pd.notna(ceiling):
            ax.plot([ceiling], [y], marker="|", color=_OVER if high > ceiling else _CEILING, ms=16, mew=2)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (log scale)")
    ax.plot([], [], "o", color=_PUBLISHED, label="published claim")
    ax.plot([], [], "*", color=_MEASURED, label="measured median (bar: 95% CI)")
    ax.plot([], [], "|", color=_CEILING, ms=12, mew=2, label="bandwidth ceiling (red: claim above it)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    return _png(fig)


def roofline_fraction(measured: pd.DataFrame, published: pd.DataFrame) -> bytes | None:
    """Fraction of the bandwidth ceiling reached, per claim and per measured decode case."""
    rows = [(f"{_short(p['device'], 30)} · {p['model']} {p['quant']}", p["fraction_low"], p["fraction_high"],
             p["engine"]) for _, p in published.dropna(subset=["fraction_high"]).iterrows()]
    if not measured.empty:
        rows += [(f"this machine · {_short(str(m['model']).rsplit('/', 1)[-1], 28)} {m['test']}",
                  m["fraction"], m["fraction"], f"{m['backend']} (measured)")
                 for _, m in measured.dropna(subset=["fraction"]).iterrows()]
    if not rows:
        return None
    engines = list(dict.fromkeys(r[3] for r in rows))
    colors = {e: _ENGINE_COLORS[i % len(_ENGINE_COLORS)] for i, e in enumerate(engines)}
    fig = matplotlib.figure.Figure(figsize=(10, 0.42 * len(rows) + 1.4))
    ax = fig.subplots()
    for y, (_, low, high, engine) in enumerate(rows):
        ax.barh(y, high, color=colors[engine], edgecolor=_OVER if high > 1 else "none", lw=2,
                hatch="//" if high > 1 else None, alpha=0.85)
        if low != high:
            ax.plot([low, high], [y, y], color="black", lw=1)
    ax.axvline(1.0, color=_OVER, ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("fraction of the memory-bandwidth ceiling (dashed: the physical limit)")
    ax.legend(handles=[matplotlib.patches.Patch(color=c, label=e) for e, c in colors.items()],
              loc="lower right", fontsize=8, title="engine")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def depth_curve(measured: pd.DataFrame) -> bytes | None:
    """Decode tok/s against context depth per case series, with the ceiling at each depth."""
    if measured.empty:
        return None
    ok = measured[measured["status"] == "ok"]
    keys = ["run", "backend", "model", "quant", "batch"]
    series = [(k, g.sort_values("n_depth")) for k, g in ok.groupby(keys) if g["n_depth"].nunique() > 1]
    if not series:
        return None
    fig = matplotlib.figure.Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, (key, g) in enumerate(series):
        color = _ENGINE_COLORS[i % len(_ENGINE_COLORS)]
        label = _short(str(key[2]).rsplit("/", 1)[-1], 40)
        err = [(g["tps"] - g["tps_ci_low"]).clip(lower=0).fillna(0),
               (g["tps_ci_high"] - g["tps"]).clip(lower=0).fillna(0)]
        ax.errorbar(g["n_depth"], g["tps"], yerr=err, marker="o", color=color, label=f"{label} measured")
        if g["ceiling_tps"].notna().any():
            ax.plot(g["n_depth"], g["ceiling_tps"], ls="--", color=color, alpha=0.6, label=f"{label} ceiling")
    ax.set_xlabel("context depth before decoding (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def batch_scaling(measured: pd.DataFrame, published: pd.DataFrame,
                  curves: dict[str, pd.DataFrame]) -> bytes | None:
    """Aggregate tok/s against concurrent sequences: measured series, published points and the
    published devices' ceilings (`curves`: label → batch, ceiling_tps)."""
    fig = matplotlib.figure.Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    drawn = False
    if not measured.empty:
        ok = measured[measured["status"] == "ok"]
        for i, (key, g) in enumerate(ok.groupby(["run", "backend", "model", "quant", "test"])):
            if g["batch"].nunique() < 2:
                continue
            g = g.sort_values("batch")
            color = _ENGINE_COLORS[i % len(_ENGINE_COLORS)]
            label = _short(str(key[2]).rsplit("/", 1)[-1], 32)
            ax.plot(g["batch"], g["tps"], marker="*", color=color, label=f"{label} aggregate (measured)")
            ax.plot(g["batch"], g["tps_per_seq"], marker=".", ls=":", color=color,
                    label=f"{label} per sequence")
            drawn = True
    speed = published[published["metric"].isin(["decode_tps", "aggregate_tps"])]
    for _, group in speed.groupby(["device_key", "model", "engine"]):
        if group["batch"].nunique() < 2:
            continue
        group = group.sort_values("batch")
        first = group.iloc[0]
        ax.plot(group["batch"], group["claimed_high"], marker="o", ls="none", color=_PUBLISHED, ms=8,
                label=f"published: {_short(first['model'], 20)}, {first['engine']}, {first['device_key']}")
        drawn = True
    for label, curve in curves.items():
        ax.plot(curve["batch"], curve["ceiling_tps"], ls="--", color=_CEILING, label=f"ceiling: {label}")
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sequences (batch)")
    ax.set_ylabel("tokens/s (all sequences)")
    ax.legend(fontsize=7)
    ax.grid(which="both", alpha=0.3)
    return _png(fig)


def memory_by_quant(memory: pd.DataFrame) -> bytes | None:
    """File size, RAM and measured peak memory per quant, one panel per model."""
    if memory.empty:
        return None
    kinds = {"file_bytes": ("published file", _PUBLISHED),
             "ram_min_bytes": ("published min RAM", "#ffbb78"),
             "memory_bytes": ("published memory in use (largest)", "#c49c94"),
             "measured": ("measured peak RSS", _MEASURED)}
    data = memory[memory["kind"].isin(kinds)].copy()
    data["quant"] = data["quant"].astype(str).str.replace(" (assumed)", "*", regex=False)
    models = [m for m in dict.fromkeys(data["model"]) if not data[data["model"] == m].empty][:3]
    if not models:
        return None
    fig = matplotlib.figure.Figure(figsize=(5 * len(models), 4.2))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        sub = data[data["model"] == model]
        quants = list(dict.fromkeys(sub["quant"]))
        series = [(k, *kinds[k]) for k in kinds if (sub["kind"] == k).any()]
        has_pred = sub["predicted_file_bytes"].notna() & (sub["kind"] == "file_bytes")
        if has_pred.any():
            series.append(("predicted", "predicted file (tokbench)", _CEILING))
        width = 0.8 / len(series)
        for j, (kind, label, color) in enumerate(series):
            values = []
            for q in quants:
                source = "file_bytes" if kind == "predicted" else kind
                cell = sub[(sub["quant"] == q) & (sub["kind"] == source)]
                col = "predicted_file_bytes" if kind == "predicted" else "bytes"
                values.append(cell[col].max() / 1e9 if not cell.empty else 0)
            ax.bar([i + j * width for i in range(len(quants))], values, width, color=color, label=label)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(quants))], quants, fontsize=8,
                      rotation=30)
        ax.set_title(_short(str(model).rsplit("/", 1)[-1], 40), fontsize=10)
        ax.set_ylabel("GB")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def all_plots(measured: pd.DataFrame, published: pd.DataFrame, memory: pd.DataFrame,
              curves: dict[str, pd.DataFrame]) -> tuple[list[Plot], list[str]]:
    """(plots drawn, one line for each plot the data could not fill)."""
    specs = [
        ("speed", "tok/s per device and engine", "Published claims (circles) beside this machine's "
         "measured medians (stars), each with its bandwidth ceiling (|).",
         lambda: speed_by_device(measured, published), "nothing measured or published"),
        ("roofline", "Fraction of the roofline", "Decode tok/s ÷ the memory-bandwidth ceiling; "
         "above 100% (hatched) is physically impossible for the stated quant and bandwidth.",
         lambda: roofline_fraction(measured, published), "no case has a known ceiling"),
        ("depth", "tok/s vs context depth", "Decode speed as the context fills (solid), and the "
         "ceiling as KV-cache reads grow (dashed).", lambda: depth_curve(measured),
         "no depth sweep: run e.g. -w tg128,tg128@d1024,tg128@d4096"),
        ("batch", "tok/s vs batch", "Aggregate tok/s as concurrent sequences grow; dashed: ceiling.",
         lambda: batch_scaling(measured, published, curves), "no batch sweep"),
        ("memory", "Memory vs quant", "Model file, RAM and peak memory per quant (* = quant assumed).",
         lambda: memory_by_quant(memory), "no memory figures"),
    ]
    # data strings are text, never TeX or mathtext: a `$` in a model name stays a `$`
    return draw_specs(specs, {"text.usetex": False, "text.parse_math": False})


#: A figure to draw: key, title, caption, the drawing (PNG bytes or None), why it may be empty.
Spec = tuple[str, str, str, Callable[[], bytes | None], str]


def draw_specs(specs: list[Spec], rc: dict[str, Any] | None = None) -> tuple[list[Plot], list[str]]:
    """Draw each spec under the matplotlib settings `rc`: (plots drawn, one line for each plot
    the data could not fill)."""
    plots, missing = [], []
    for key, title, caption, draw, why in specs:
        with matplotlib.rc_context(rc or {}):
            png = draw()
        if png is None:
            missing.append(f"{title}: {why}")
        else:
            plots.append(Plot(key, title, caption, png))
    return plots, missing
