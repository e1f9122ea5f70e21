"""Serving sweeps as latency–throughput figures (matplotlib, Agg) and one table, from stored runs.

A *series* is the points of one load sweep: one run, backend, model and workload *template*, the
workload name without its load level (cN, rR) and its length of measurement (nN, durS, warmN),
so c1:in128:out32 … c64:in128:out32 form one curve, ordered by load. Concurrency sweeps (c*) and
rate sweeps (r*) are different templates, never one curve.

Each figure returns PNG bytes, or None when the runs hold nothing to draw (no series with at least
two load points; no SLO for goodput). Names from the data (models, workloads, run ids) are drawn as
plain text: `$` is escaped so matplotlib's mathtext never reads a model name as a formula.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure
import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd

from reports.plots import _CEILING, _ENGINE_COLORS, _PUBLISHED, Plot, _png, _short, draw_specs
from results.store import Store

SERIES_KEYS = ("run_id", "backend", "model", "template", "setting")
#: Load kind → (workload prefix, axis label).
LOAD_KINDS = {"concurrency": ("c", "concurrency (requests in flight)"),
              "rate": ("r", "offered load (requests/s)")}
_LOAD = re.compile(r"^(?:c(?P<c>\d+)|r(?P<r>\d+(?:\.\d+)?))$")
_PATH = re.compile(r"^[\w.@:~+-]*(?:/[\w.@:~+-]+)+$")  # a path or an org/name id: shown by its last part
_NOT_TEMPLATE = re.compile(r"^(?:n\d+|dur\d+(?:\.\d+)?[sm]?|warm\d+)$")
_METRICS = ("output_tps", "request_rate", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
            "goodput_rate", "goodput_share")

F = TypeVar("F", bound=Callable[..., Any])


def _plain_text(draw: F) -> F:
    """Draw with TeX off, whatever the user's matplotlibrc says (labels are escaped for mathtext)."""
    @wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context({"text.usetex": False}):
            return draw(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def plain(text: object) -> str:
    """Text from the data, safe for a matplotlib label: every `$` escaped, so no mathtext."""
    return str(text).replace("$", r"\$")


# -- points and series ---------------------------------------------------------------------------------
def workload_template(workload: str) -> tuple[str | None, float | None, str]:
    """(load kind, load level, template) of a serving workload name:
    c16:in512:out128:n200 → ("concurrency", 16, "c*:in512:out128"); a name without a cN/rR load
    (an imported run's) → (None, None, the name without nN/durS/warmN)."""
    head, *rest = str(workload).split(":")
    rest = [f for f in rest if not _NOT_TEMPLATE.match(f)]
    m = _LOAD.match(head)
    if not m:
        return None, None, ":".join([head, *rest])
    kind = "concurrency" if m["c"] else "rate"
    level = float(m["c"] or m["r"])
    return kind, level, ":".join([f"{LOAD_KINDS[kind][0]}*", *rest])


def add_load(frame: pd.DataFrame, store: Store) -> pd.DataFrame:
    """The serving frame with `concurrency` and `rate` from each case's stored load (by case_id),
    where serving_frame does not already carry them."""
    if frame.empty or "case_id" not in frame or {"concurrency", "rate"} <= set(frame.columns):
        return frame
    docs: dict[int, dict[str, Any]] = {}
    for run_id in frame["run_id"].unique():
        docs.update({c["case_id"]: c.get("load") or {} for c in store.cases(str(run_id))})
    out = frame.copy()
    out["concurrency"] = [docs.get(c, {}).get("concurrency") for c in frame["case_id"]]
    out["rate"] = [docs.get(c, {}).get("rate") for c in frame["case_id"]]
    return out


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def series_labels(keys: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Short, distinct legend labels: only the parts of the series key that differ between series
    (run, backend, model — a path or org/name by its last part unless two would collide —,
    template, engine setting); the run only when the other parts do not tell the series apart."""
    keys = list(dict.fromkeys(keys))
    models = {k[2] for k in keys}
    short = {m: str(m).rsplit("/", 1)[-1] if _PATH.match(str(m)) else str(m) for m in models}
    if len(set(short.values())) < len(models):
        short = {m: str(m) for m in models}
    varies = [len({k[i] for k in keys}) > 1 for i in range(5)]
    if len({k[1:] for k in keys}) == len(keys):
        varies[0] = False
    varies[1] |= varies[4]  # a setting names its backend
    if not any(varies):
        varies = [False, True, True, False, False]
    out = {}
    for k in keys:
        parts = [k[0], k[1], short[k[2]], k[3], k[4]]
        out[k] = " · ".join(_short(str(p), 40) for p, v in zip(parts, varies, strict=True)
                            if v and p)
    return out


def _settings(frame: pd.DataFrame) -> list[str]:
    """Each case's engine parameters that differ between the cases of its backend, as
    `name=value` (a path by its last part; unset ones left out): what tells two runs of one
    backend apart (llama-cpp-python's server from llama.cpp's own, say)."""
    params = [c for c in frame.columns if c.startswith("param_")]
    varying = {b: [c for c in params if g[c].astype(str).nunique(dropna=False) > 1]
               for b, g in frame.groupby("backend", sort=False)}
    out = []
    for _, r in frame.iterrows():
        parts = []
        for c in varying.get(r["backend"], []):
            value = r[c]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            text = f"{value:g}" if isinstance(value, float) else str(value)
            text = text.rsplit("/", 1)[-1] if _PATH.match(text) else text
            parts.append(f"{c.removeprefix('param_')}={text}")
        out.append(" ".join(parts))
    return out


def sweep_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The serving frame's successful cases with load_kind, load, template, series (index, in order
    of first appearance) and label, each series ordered by load. The load comes from the stored
    load doc (columns added by add_load) where present, else from the workload name."""
    columns = [*SERIES_KEYS, "workload", "load_kind", "load", "series", "label", *_METRICS]
    if frame.empty or "output_tps" not in frame:
        return pd.DataFrame(columns=columns)
    rows = []
    for (_, r), setting in zip(frame.iterrows(), _settings(frame), strict=True):
        if r.get("status") != "ok" or not _present(r.get("output_tps")) or not r["output_tps"] > 0:
            continue
        kind, level, template = workload_template(r["workload"])
        if _present(r.get("concurrency")):
            kind, level = "concurrency", float(r["concurrency"])
        elif _present(r.get("rate")):
            kind, level = "rate", float(r["rate"])
        if kind is None:
            continue
        rows.append({"run_id": str(r["run_id"]), "backend": str(r["backend"]), "model": str(r["model"]),
                     "template": template, "setting": setting, "workload": r["workload"],
                     "load_kind": kind, "load": level,
                     **{m: float(r[m]) if _present(r.get(m)) else math.nan for m in _METRICS}})
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(rows)
    keys = list(dict.fromkeys(zip(*(out[k] for k in SERIES_KEYS), strict=True)))
    index = {k: i for i, k in enumerate(keys)}
    labels = series_labels(keys)
    key_of = list(zip(*(out[k] for k in SERIES_KEYS), strict=True))
    out["series"] = [index[k] for k in key_of]
    out["label"] = [labels[k] for k in key_of]
    return out.sort_values(["series", "load"], kind="stable", ignore_index=True)[columns]


def has_sweep(points: pd.DataFrame) -> bool:
    """Whether some series holds at least two load levels."""
    return bool(not points.empty and (points.groupby("series")["load"].nunique() >= 2).any())


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Mask of the non-dominated points, both coordinates maximized: a point is dominated when
    another is at least as good in both and better in one (equal points both stay). Points with
    a NaN are neither on the front nor dominate."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    finite = np.isfinite(p).all(axis=1)
    q = p[finite]
    mask = np.zeros(len(p), dtype=bool)
    for i in np.flatnonzero(finite):
        dominated = ((q >= p[i]).all(axis=1) & (q > p[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def _with_front(points: pd.DataFrame) -> pd.DataFrame:
    """Adds tps_per_user (1000 ÷ median TPOT) and pareto (on its series' front)."""
    out = points.copy()
    tpot = out["tpot_p50"].where(out["tpot_p50"] > 0)
    out["tps_per_user"] = 1000 / tpot
    out["pareto"] = False
    for _, g in out.groupby("series"):
        out.loc[g.index, "pareto"] = pareto_front(g[["output_tps", "tps_per_user"]].to_numpy())
    return out


def load_text(kind: str, level: float) -> str:
    """c16, or 2.5 req/s."""
    return f"c{level:g}" if kind == "concurrency" else f"{level:g} req/s"


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per series and load level, in series then load order: the load, output tok/s,
    req/s, TTFT and TPOT p50/p99 (ms), tok/s per user (1000 ÷ median TPOT), goodput (req/s
    meeting the SLO, and its share; NaN without an SLO), and whether the point is on its series'
    Pareto front (aggregate vs per-user tok/s)."""
    points = sweep_points(frame)
    columns = ["series", "run_id", "backend", "model", "template", "load_kind", "load", "output_tps",
               "request_rate", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "tps_per_user",
               "goodput_rate", "goodput_share", "pareto"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    out = _with_front(points)
    out["series"] = out["label"]
    return out[columns]


# -- figures --------------------------------------------------------------------------------------------
def _color(series: int) -> str:
    return _ENGINE_COLORS[series % len(_ENGINE_COLORS)]


def _tick(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


class _PlainLogFormatter(matplotlib.ticker.LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (400, 1,024)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return _tick(x) if super().__call__(x, pos) else ""


def _log_axis(ax: Any, axis: str, base: int = 10) -> None:
    """A log axis labelled with plain numbers, minor ticks labelled where the range is narrow."""
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=base)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(_PlainLogFormatter(base=base, labelOnlyBase=False))
    target.set_minor_formatter(_PlainLogFormatter(base=base, minor_thresholds=(1.2, 0.6)))


def _log_if_wide(ax: Any, axis: str, values: pd.Series, ratio: float = 20.0) -> None:
    v = values[values > 0]
    if not v.empty and v.max() / v.min() >= ratio:
        _log_axis(ax, axis)


def _series_handles(points: pd.DataFrame) -> list[matplotlib.lines.Line2D]:
    first = points.drop_duplicates("series")
    return [matplotlib.lines.Line2D([], [], color=_color(s), marker="o", label=plain(label))
            for s, label in zip(first["series"], first["label"], strict=True)]


@_plain_text
def latency_throughput(frame: pd.DataFrame) -> bytes | None:
    """TTFT and TPOT (ms, log) at p50 (solid) and p99 (dashed) against achieved output tok/s, one
    curve per series in load order, each p50 point marked with its load."""
    points = sweep_points(frame)
    if not has_sweep(points):
        return None
    fig = matplotlib.figure.Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    for ax, metric, name in zip(axes, ("ttft", "tpot"), ("TTFT", "TPOT"), strict=True):
        for series, g in points.groupby("series"):
            for pct, style, marker in (("p50", "-", "o"), ("p99", "--", "x")):
                sub = g.dropna(subset=[f"{metric}_{pct}"])
                sub = sub[sub[f"{metric}_{pct}"] > 0]
                ax.plot(sub["output_tps"], sub[f"{metric}_{pct}"], ls=style, marker=marker, ms=5,
                        color=_color(int(series)))
                if pct == "p50":
                    for _, r in sub.iterrows():
                        ax.annotate(load_text(r["load_kind"], r["load"]),
                                    (r["output_tps"], r[f"{metric}_p50"]), textcoords="offset points",
                                    xytext=(4, -9), fontsize=6, color=_color(int(series)))
        _log_axis(ax, "y")
        _log_if_wide(ax, "x", points["output_tps"])
        ax.set_xlabel("achieved output tok/s (all requests)")
        ax.set_ylabel(f"{name} (ms, log scale)")
        ax.set_title(f"{name}: p50 solid, p99 dashed", fontsize=10)
        ax.grid(which="both", alpha=0.3)
    handles = [*_series_handles(points),
               matplotlib.lines.Line2D([], [], color="black", ls="-", marker="o", label="p50"),
               matplotlib.lines.Line2D([], [], color="black", ls="--", marker="x", label="p99")]
    axes[0].legend(handles=handles, fontsize=7, loc="upper left")
    return _png(fig)


@_plain_text
def pareto(frame: pd.DataFrame) -> bytes | None:
    """tok/s per user (1000 ÷ median TPOT) against aggregate output tok/s, every point, and each
    series' Pareto front (the points no other point of the series beats on both)."""
    points = sweep_points(frame)
    if not has_sweep(points):
        return None
    points = _with_front(points).dropna(subset=["tps_per_user"])
    if points.empty:
        return None
    fig = matplotlib.figure.Figure(figsize=(8, 5))
    ax = fig.subplots()
    for series, g in points.groupby("series"):
        color = _color(int(series))
        ax.plot(g["output_tps"], g["tps_per_user"], ls="none", marker="o", alpha=0.45, color=color)
        front = g[g["pareto"]].sort_values("output_tps")
        ax.plot(front["output_tps"], front["tps_per_user"], ls="-", marker="o", color=color)
        for _, r in g.iterrows():
            ax.annotate(load_text(r["load_kind"], r["load"]), (r["output_tps"], r["tps_per_user"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=6, color=color)
    _log_if_wide(ax, "x", points["output_tps"])
    _log_if_wide(ax, "y", points["tps_per_user"])
    ax.set_xlabel("aggregate output tok/s (all requests)")
    ax.set_ylabel("tok/s per user = 1000 ÷ median TPOT (ms)")
    ax.set_title("Pareto front per series (line); faint points are dominated", fontsize=10)
    ax.legend(handles=_series_handles(points), fontsize=7)
    ax.grid(which="both", alpha=0.3)
    return _png(fig)


def _slo_text(frame: pd.DataFrame) -> str:
    slos = {str(s) for s in frame.get("goodput_slo", pd.Series(dtype=object)) if isinstance(s, dict) and s}
    if len(slos) != 1:
        return "the SLOs each run was given" if slos else "the SLO"
    slo = next(s for s in frame["goodput_slo"] if isinstance(s, dict) and s)
    return ", ".join(f"{k} ≤ {v:g} ms" for k, v in slo.items())


@_plain_text
def goodput_vs_load(frame: pd.DataFrame) -> bytes | None:
    """Goodput (requests/s meeting every SLO, solid) and completed requests/s (dotted) against the
    offered load; one panel per load kind (concurrency; rate, with the offered = achieved line)."""
    points = sweep_points(frame)
    points = points[points["goodput_rate"].notna()] if not points.empty else points
    if not has_sweep(points):
        return None
    kinds = [k for k in LOAD_KINDS if (points["load_kind"] == k).any()]
    fig = matplotlib.figure.Figure(figsize=(6.5 * len(kinds), 4.6))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        sub = points[points["load_kind"] == kind]
        for series, g in sub.groupby("series"):
            color = _color(int(series))
            ax.plot(g["load"], g["goodput_rate"], ls="-", marker="o", color=color)
            ax.plot(g["load"], g["request_rate"], ls=":", marker="x", color=color)
        if kind == "rate":
            span = [sub["load"].min(), sub["load"].max()]
            ax.plot(span, span, ls="--", color=_CEILING, lw=1, label="achieved = offered")
        if kind == "concurrency":
            _log_axis(ax, "x", 2)
        else:
            _log_if_wide(ax, "x", sub["load"], 10)
        ax.set_xlabel(LOAD_KINDS[kind][1])
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        loop = "closed loop" if kind == "concurrency" else "open loop"
        ax.set_title(f"{loop}: x = {LOAD_KINDS[kind][1]}", fontsize=10)
        key = matplotlib.lines.Line2D
        handles = [*_series_handles(sub),
                   key([], [], color="black", ls="-", marker="o", label="goodput"),
                   key([], [], color="black", ls=":", marker="x", label="completed req/s")]
        if kind == "rate":
            handles.append(matplotlib.lines.Line2D([], [], color=_CEILING, ls="--",
                                                   label="achieved = offered"))
        ax.legend(handles=handles, fontsize=7)
        ax.grid(which="both", alpha=0.3)
    fig.suptitle(plain(f"goodput: requests meeting {_slo_text(frame)}"), fontsize=10)
    return _png(fig)


def published_serving_points(published: pd.DataFrame) -> pd.DataFrame:
    """Published speeds of every (device, model, engine) that has an aggregate (serving) figure:
    the aggregate points and that setup's single-stream decode, by batch."""
    need = {"metric", "device_key", "model", "engine", "batch", "claimed_high"}
    if published.empty or not need <= set(published.columns):
        return pd.DataFrame(columns=list(need))
    speed = published[published["metric"].isin(["decode_tps", "aggregate_tps"])]
    keys = ["device_key", "model", "engine"]
    serving = speed[speed["metric"] == "aggregate_tps"][keys].drop_duplicates()
    return speed.merge(serving, on=keys).sort_values([*keys, "batch"], ignore_index=True)


@_plain_text
def published_serving(frame: pd.DataFrame, published: pd.DataFrame,
                      curves: dict[str, pd.DataFrame]) -> bytes | None:
    """Aggregate decode tok/s against concurrency (log-log): published serving figures (with the
    fraction of their ceiling), the batched-decode ceiling the report computes for their device
    and model (`curves`: label → batch, ceiling_tps), and measured concurrency sweeps beside them.
    None without a published serving figure."""
    claims = published_serving_points(published)
    if claims.empty:
        return None
    points = sweep_points(frame)
    measured = points[points["load_kind"] == "concurrency"] if not points.empty else points
    fig = matplotlib.figure.Figure(figsize=(8.5, 5))
    ax = fig.subplots()
    handles = []
    for label, curve in curves.items():
        (line,) = ax.plot(curve["batch"], curve["ceiling_tps"], ls="--", color=_CEILING,
                          label=plain(f"ceiling: {label}"))
        handles.append(line)
    for (device, model, engine), g in claims.groupby(["device_key", "model", "engine"], sort=False):
        low = g["claimed_low"] if "claimed_low" in g else g["claimed_high"]
        (line,) = ax.plot(g["batch"], g["claimed_high"], ls="none", marker="D", ms=8, color=_PUBLISHED,
                          label=plain(f"published: {_short(str(model), 24)}, {engine}, {device}"))
        handles.append(line)
        ax.vlines(g["batch"], low, g["claimed_high"], color=_PUBLISHED, lw=2)
        for _, r in g.iterrows():
            frac = r.get("fraction_high")
            text = f"{r['claimed_high']:,.0f} tok/s" + (f" ({frac:.0%} of ceiling)" if _present(frac) else "")
            ax.annotate(text, (r["batch"], r["claimed_high"]), textcoords="offset points", xytext=(6, -12),
                        fontsize=7, color=_PUBLISHED)
    for series, g in measured.groupby("series"):
        label, model = g["label"].iloc[0], str(g["model"].iloc[0])
        model = model.rsplit("/", 1)[-1] if _PATH.match(model) else model
        label = label if model in label else f"{label} · {_short(model, 24)}"
        (line,) = ax.plot(g["load"], g["output_tps"], marker="*", ms=9, color=_color(int(series)),
                          label=plain(f"measured: {label}"))
        handles.append(line)
    _log_axis(ax, "x", 2)
    _log_axis(ax, "y")
    ax.set_xlabel("concurrent requests (published: batch)")
    ax.set_ylabel("aggregate output tok/s (log scale)")
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    ax.grid(which="both", alpha=0.3)
    return _png(fig)


def serving_plots(frame: pd.DataFrame, published: pd.DataFrame,
                  curves: dict[str, pd.DataFrame]) -> tuple[list[Plot], list[str]]:
    """(plots drawn, one line for each the data could not fill), as reports.plots.all_plots."""
    specs = [
        ("serving_latency", "Latency vs throughput", "TTFT and TPOT against achieved output tok/s, one "
         "curve per series in load order (p50 solid, p99 dashed; each p50 point marked with its load).",
         lambda: latency_throughput(frame), "no series with two load levels"),
        ("serving_pareto", "Per-user vs aggregate tok/s", "tok/s each user sees (1000 ÷ median TPOT) "
         "against aggregate output tok/s; the line joins each series' Pareto front, the points no "
         "other load level of the series beats on both.", lambda: pareto(frame),
         "no series with two load levels and a TPOT"),
        ("serving_goodput", "Goodput vs offered load", "Requests/s meeting every SLO (solid) and "
         "completed requests/s (dotted) as the offered load grows.", lambda: goodput_vs_load(frame),
         "no SLO: run with --slo ttft=…,tpot=… to judge goodput"),
        ("serving_published", "Aggregate tok/s vs concurrency, with the published serving figures",
         "Measured concurrency sweeps (stars) beside published aggregate figures (diamonds, with the "
         "fraction of their ceiling) and the batched-decode bandwidth/compute ceiling of their device "
         "and model (dashed).", lambda: published_serving(frame, published, curves),
         "no published serving figure (they are compared with --against published)"),
    ]
    return draw_specs(specs)
