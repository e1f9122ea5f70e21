"""The llama-bench style results table, built with pandas from stored results.

Columns: model, size, params, backend, threads, any parameter that varies or differs from the
backend default, test, t/s (mean ± sample stddev), median with its bootstrap 95% interval, peak
memory. Failed cases keep a row that says what failed.
"""

from __future__ import annotations

import html
import math

import pandas as pd
from rich.table import Table
from rich.text import Text

_ALWAYS = ("threads",)
RIGHT_ALIGNED = ("t/s", "median [95% CI]", "t/s per seq", "size", "params", "peak RSS")


def _size(n_bytes: float | None) -> str:
    if n_bytes is None or pd.isna(n_bytes):
        return "–"
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def _count(n: float | None) -> str:
    if n is None or pd.isna(n):
        return "–"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _rate(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f} ± {sd:.2f}" if not pd.isna(sd) else f"{mean:.2f}"


def _median(median: float, low: float, high: float, n: float, lo: float, hi: float) -> str:
    """The median with its 95% interval; below the n where one exists, the range, said to be
    only that."""
    if pd.isna(median):
        return "–"
    if pd.isna(low):
        if n > 1:
            return f"{median:.2f} (n={n:g}: range {lo:.2f}–{hi:.2f}, too few for a 95% CI)"
        return f"{median:.2f}"
    return f"{median:.2f} [{low:.2f}, {high:.2f}]"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown_params(df: pd.DataFrame) -> list[str]:
    """threads always; other parameters when they vary or differ from the backend default the
    run stored (a run stored before defaults were kept shows the parameters that vary)."""
    shown = []
    defaults = df["defaults"] if "defaults" in df else pd.Series([{}] * len(df), index=df.index)
    for col in (c for c in df.columns if c.startswith("param_")):
        name = col.removeprefix("param_")
        values = df[col].dropna().unique().tolist()
        changed = any(name in d and not (_missing(v) and _missing(d[name])) and v != d[name]
                      for v, d in zip(df[col], defaults, strict=True))
        if name in _ALWAYS or len(values) > 1 or changed:
            shown.append(name)
    return shown


def summary_table(cases: pd.DataFrame) -> pd.DataFrame:
    """Display rows from results.frames.cases_frame (one per case × phase)."""
    if cases.empty:
        return pd.DataFrame()
    params = _shown_params(cases)
    out = pd.DataFrame({
        "model": cases["model_desc"].fillna(cases["model"].map(lambda m: m.rsplit("/", 1)[-1])),
        "size": cases["model_size_bytes"].map(_size),
        "params": cases["model_n_params"].map(_count),
        "backend": cases["backend"],
    })
    if "arm" in cases and cases["arm"].notna().any():  # a `tokbench ab` run
        out["arm"] = cases["arm"]
    for name in params:
        out[name] = cases[f"param_{name}"]
    out["test"] = [f"{t} ({w})" if "+" in w else t
                   for t, w in zip(cases["test"], cases["workload"], strict=True)]
    out["t/s"] = [_rate(m, s) for m, s in zip(cases["tps_mean"], cases["tps_stddev"], strict=True)]
    out["median [95% CI]"] = [
        _median(*row) for row in zip(cases["tps_median"], cases["tps_ci_low"], cases["tps_ci_high"],
                                     cases["n_trials"], cases["tps_min"], cases["tps_max"], strict=True)
    ]
    if "param_batch" in cases and (cases["param_batch"].fillna(1) > 1).any():
        batch = cases["param_batch"].fillna(1)
        out["t/s per seq"] = [f"{m / b:.2f}" if not pd.isna(m) else "–"
                              for m, b in zip(cases["tps_median"], batch, strict=True)]
    out["peak RSS"] = cases["peak_rss_bytes"].map(_size)
    if (cases["status"] != "ok").any():
        out["status"] = [
            s if s == "ok" or not isinstance(e, str) else f"{s}: {e}"
            for s, e in zip(cases["status"], cases["error"], strict=True)
        ]
    return out


def _cells(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text; a missing value (a parameter another backend lacks) as –."""
    def text(v: object) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "–"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))  # an integer column turned float by another backend's gaps
        return str(v)

    return table.map(text)


def to_markdown(table: pd.DataFrame, right: tuple[str, ...] = RIGHT_ALIGNED) -> str:
    """A GitHub-flavoured Markdown table (pandas + tabulate); pipes and HTML in cells escaped."""
    if table.empty:
        return "_no cases_\n"
    cells = _cells(table).map(lambda v: html.escape(v, quote=False).replace("|", "\\|"))
    cells.columns = [html.escape(str(c), quote=False) for c in table.columns]
    align = tuple("right" if c in right else "left" for c in table.columns)
    return cells.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True) + "\n"


def to_rich(table: pd.DataFrame, title: str | None = None) -> Table:
    """A rich table whose every string is plain text: a model name or an error with `[/x]` in it
    is shown as written, never parsed as console markup."""
    rich_table = Table(title=Text(title) if title else None, show_lines=False)
    for col in table.columns:
        right = col in RIGHT_ALIGNED or col in SERVING_RIGHT
        rich_table.add_column(Text(str(col)), justify="right" if right else "left",
                              overflow="fold")
    for row in _cells(table).itertuples(index=False):
        rich_table.add_row(*(Text(cell) for cell in row))
    return rich_table


# -- serving ---------------------------------------------------------------------------------------
SERVING_RIGHT = ("requests", "errors", "req/s", "out tok/s", "TTFT p50 [95% CI]", "TTFT p99",
                 "TPOT p50 [95% CI]", "TPOT p99", "ITL p50", "E2EL p50", "goodput")


def _ms(value: float, low: float | None = None, high: float | None = None) -> str:
    """A latency in ms; with its interval when one was computed (– for a bound the sample
    cannot give: too few requests for that percentile)."""
    if value is None or pd.isna(value):
        return "–"
    if low is None:
        return f"{value:.1f}"
    show = [("–" if b is None or pd.isna(b) else f"{b:.1f}") for b in (low, high)]
    return f"{value:.1f} [{show[0]}, {show[1]}]"


def serving_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Display rows from results.frames.serving_frame (one per serving case): latencies in ms."""
    if frame.empty:
        return pd.DataFrame()

    def col(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index)

    out = pd.DataFrame({"backend": frame["backend"],
                        "model": frame["model"].map(lambda m: str(m).rsplit("/", 1)[-1])})
    for name in _shown_params(frame):
        out[name] = frame[f"param_{name}"]
    out["workload"] = frame["workload"]
    out["requests"] = [f"{int(c)}/{int(n)}"
                       for c, n in zip(frame["completed"], frame["requests"], strict=True)]
    out["errors"] = [f"{e:.1%}" if not pd.isna(e) else "–" for e in frame["error_rate"]]
    out["req/s"] = [f"{v:.2f}" for v in frame["request_rate"]]
    out["out tok/s"] = [f"{v:.1f}" for v in frame["output_tps"]]
    for metric, title in (("ttft", "TTFT"), ("tpot", "TPOT")):
        out[f"{title} p50 [95% CI]"] = [_ms(m, lo, hi) for m, lo, hi in
                                       zip(col(f"{metric}_p50"), col(f"{metric}_p50_low"),
                                           col(f"{metric}_p50_high"), strict=True)]
        out[f"{title} p99"] = col(f"{metric}_p99").map(_ms)
    out["ITL p50"] = col("itl_p50").map(_ms)
    out["E2EL p50"] = col("e2el_p50").map(_ms)
    if "goodput_share" in frame and frame["goodput_share"].notna().any():
        out["goodput"] = [f"{s:.0%} ({r:.2f} req/s)" if not pd.isna(s) else "–"
                          for s, r in zip(frame["goodput_share"], frame["goodput_rate"], strict=True)]
    if (frame["status"] != "ok").any():
        out["status"] = [s if s == "ok" or not isinstance(e, str) else f"{s}: {e}"
                         for s, e in zip(frame["status"], frame["error"], strict=True)]
    return out


def serving_notes(frame: pd.DataFrame) -> list[str]:
    """Each serving case's warnings, one line each, and how its tokens were counted."""
    lines = []
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        for note in row.notes or []:
            lines.append(f"{row.workload} ({row.backend}): {note}")
        server = getattr(row, "server", None)
        if isinstance(server, dict) and server.get("n"):
            src, s = ", ".join(server["source"]), server
            lines.append(
                f"{row.workload} ({row.backend}): the server's own timings ({src}, {s['n']} "
                f"requests): prompt {s['prompt_ms_p50']:.1f} ms, decode {s['decode_ms_p50']:.1f} ms "
                f"(p50); the client saw {s['ttft_overhead_ms_p50']:.1f} ms more to the first token "
                f"and {s['e2el_overhead_ms_p50']:.1f} ms more end to end (HTTP, queueing, streaming)")
        slo = getattr(row, "goodput_slo", None)
        if i == 1 and isinstance(slo, dict) and slo:
            lines.append("goodput: requests meeting every SLO (" +
                         ", ".join(f"{k} ≤ {v:g} ms" for k, v in slo.items()) + ")")
    return lines


TURN_RIGHT = ("turn", "requests", "TTFT p50 [95% CI]", "prompt tokens", "cached tokens", "cache hits")


def _tokens(n: float | None) -> str:
    return "–" if n is None or pd.isna(n) else f"{n:.0f}"


def turn_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Multi-turn cases, one row per turn: what a longer history costs in TTFT, and what the
    server's prefix cache saves where it states its cached tokens."""
    rows = []
    for row in frame.itertuples(index=False):
        for t in getattr(row, "turns", None) or []:
            cached = t["cached_tokens_p50"]
            rows.append({"backend": row.backend, "workload": row.workload, "turn": t["turn"] + 1,
                         "requests": t["n"],
                         "TTFT p50 [95% CI]": _ms(t["ttft_p50"], t["ttft_p50_low"], t["ttft_p50_high"]),
                         "prompt tokens": _tokens(t["prompt_tokens_p50"]),
                         "cached tokens": "not stated" if cached is None else _tokens(cached),
                         "cache hits": "–" if t["cache_hit_share"] is None
                         else f"{t['cache_hit_share']:.0%}"})
    return pd.DataFrame(rows)


SEARCH_RIGHT = ("level", "requests", "out tok/s", "req/s", "TTFT p50", "TTFT p99", "TPOT p50",
                "TPOT p99", "goodput")


def search_table(found: dict) -> pd.DataFrame:
    """One row per step of a sweep or capacity search (results.frames.searches), in the order
    measured; a capacity search adds each level's verdict, all its steps pooled."""
    steps = found["steps"]
    out = pd.DataFrame({
        "step": [d["step"] + 1 for d in steps["sweep"]],
        "level": [f"{d['level']:g}" for d in steps["sweep"]],
        "workload": steps["workload"],
        "requests": [f"{int(c)}/{int(n)}" for c, n in zip(steps["completed"], steps["requests"],
                                                         strict=True)],
        "out tok/s": [f"{v:.1f}" for v in steps["output_tps"]],
        "req/s": [f"{v:.2f}" for v in steps["request_rate"]],
    })
    for metric, title in (("ttft", "TTFT"), ("tpot", "TPOT")):
        for p in (50, 99):
            name = f"{metric}_p{p}"
            out[f"{title} p{p}"] = steps[name].map(_ms) if name in steps else "–"
    cap = found.get("capacity")
    if cap is not None:
        first = steps["sweep"].iloc[0]
        verdicts = {j.level: j for j in cap.judgements}
        out["goodput"] = [f"{s:.0%}" if not pd.isna(s) else "–" for s in steps.get("goodput_share", [])]
        out[f"p{first['percentile']:g} verdict (level pooled)"] = [
            _verdict(verdicts.get(d["level"])) for d in steps["sweep"]]
    return out


def _verdict(j: object) -> str:
    if j is None:
        return "–"
    word = {"pass": "meets (sure)", "fail": "misses (sure)"}.get(j.sure) or (
        "meets (unsure)" if j.meets else "misses (unsure)")
    return f"{word}, n={j.n}"
