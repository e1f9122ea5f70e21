"""`tokbench report`: stored runs → sections (display table + raw data) → Markdown, HTML or CSV.

The report answers "is my machine doing as well as the vendor says, and if not, why?": measured
speeds against the bandwidth ceiling, published claims against theirs, a projection of this
machine's efficiency onto each catalog device, and memory fits. Every writer renders the same
Report; HTML is one self-contained page (plots as data URIs, every string escaped).
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.common.files import write_output
from reports import comparison as cmp
from reports.comparison import reference
from reports.plots import Plot, all_plots
from reports.serving_plots import has_sweep, load_text, serving_plots, sweep_points, sweep_table
from reports.tables import RIGHT_ALIGNED, summary_table, to_markdown
from results.export import csv_text
from results.frames import cases_frame
from results.reference import Device
from results.store import Store


@dataclass
class Section:
    key: str  # CSV file stem
    title: str
    intro: str
    table: pd.DataFrame  # display cells
    data: pd.DataFrame  # raw values, for CSV
    right: tuple[str, ...] = ()  # right-aligned display columns
    plots: list[Plot] = field(default_factory=list)  # figures shown under the table
    missing_plots: list[str] = field(default_factory=list)  # one line per figure not drawn
    notes: list[str] = field(default_factory=list)  # one finding per line, listed under the intro


@dataclass
class Report:
    title: str
    runs: list[str]  # one line per run
    warnings: list[str]
    sections: list[Section]
    plots: list[Plot] = field(default_factory=list)
    missing_plots: list[str] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)  # (text, url)


def _num(x: float | None, fmt: str = ",.1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _run_line(rd: cmp.RunData, store: Store) -> str:
    run, profile = rd.run, rd.run.get("profile") or {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started_at"]))
    source = run.get("source")
    if source:  # imported: only what its file states about the machine
        tool = " ".join(str(x) for x in (source.get("tool"), source.get("version")) if x)
        stated = (source.get("machine") or {}).items()
        machine = "; ".join(f"{k} {v}" for k, v in stated if v not in ("", None))
        return (f"run {run['run_id']} (imported, {started}): {tool}, {source.get('format')} "
                f"{Path(str(source.get('file'))).name}"
                + (f"; the file says: {machine}" if machine else "")
                + ("; aggregates only" if not source.get("samples", True) else "")
                + f"; not stated: {', '.join(source.get('unknown') or []) or 'nothing'}")
    bw = (profile.get("memory_bandwidth") or {}).get("copy_gbps")
    ram = (profile.get("ram_bytes") or 0) / 2**30
    return (f"run {run['run_id']} ({store.run_state(run)}, {started}): "
            f"{profile.get('cpu_brand') or 'unknown CPU'}, {profile.get('physical_cores') or '?'} cores, "
            f"{ram:.0f} GiB, "
            f"measured bandwidth {bw if bw else '–'} GB/s · {run.get('command') or ''}")


def _failures(rd: cmp.RunData, store: Store) -> list[str]:
    out = []
    failed = rd.cases[rd.cases["status"] != "ok"].drop_duplicates("case_id")
    n_cases = rd.cases["case_id"].nunique()
    if not failed.empty:
        out.append(f"run {rd.run_id}: {len(failed)} of {n_cases} cases did not succeed; they are listed "
                   "with their errors, not dropped")
        out += [f"{rd.run_id} case {int(r['case_index']) + 1} ({r['backend']} {r['model']} {r['workload']}): "
                f"{r['status']}: {r['error'] or 'no result'}" for _, r in failed.iterrows()]
    state = store.run_state(rd.run)
    if state != "complete":
        out.append(f"run {rd.run_id} is {state}: figures cover only its finished trials")
    return out


# -- sections ---------------------------------------------------------------------------------------
def _measured_section(runs: list[cmp.RunData]) -> Section:
    frames = []
    for rd in runs:
        table = summary_table(rd.cases)
        if len(runs) > 1 and not table.empty:
            table.insert(0, "run", rd.run_id)
        frames.append(table)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    data = pd.concat([rd.cases for rd in runs], ignore_index=True)
    return Section("measured", "Measured", "Every case of the run(s), per timed phase: mean ± sample "
                   "stddev of per-trial tok/s, and the median with its bootstrap 95% interval. "
                   "`batch` > 1: tok/s is the aggregate over all sequences.", table, data, RIGHT_ALIGNED)


def _serving_frames(store: Store, runs: list[cmp.RunData]) -> dict[str, pd.DataFrame]:
    """Each run's serving cases (results.frames.serving_frame), with each case's stored load."""
    from reports.serving_plots import add_load
    from results.frames import serving_frame

    return {rd.run_id: add_load(serving_frame(store, rd.run_id), store) for rd in runs}


def _search_lines(store: Store, runs: list[cmp.RunData]) -> list[str]:
    """One line per sweep or capacity search: why it stopped, or the capacity it found (re-judged
    from the stored requests)."""
    from results.frames import searches

    lines = []
    for rd in runs:
        for found in searches(store, rd.run_id):
            answer = found.get("answer") or found["stop"] or "the search did not finish"
            lines.append(f"{found['kind']} `{found['search']}` ({found['backend']}, run {rd.run_id}): "
                         f"{answer}.")
    return lines


def _serving_section(runs: list[cmp.RunData], serving: dict[str, pd.DataFrame],
                     search_lines: list[str] = ()) -> list[Section]:
    """Serving cases: latencies, throughput and goodput (none when no run has serving cases)."""
    from reports.tables import SERVING_RIGHT, serving_notes, serving_table

    frames, tables, notes = [], [], []
    for rd in runs:
        frame = serving[rd.run_id]
        if frame.empty:
            continue
        table = serving_table(frame)
        if len(runs) > 1:
            table.insert(0, "run", rd.run_id)
        frames.append(frame)
        tables.append(table)
        notes += serving_notes(frame)
    if not frames:
        return []
    intro = ("Serving cases, as `vllm bench serve` defines the metrics: TTFT to the first chunk with "
             "generated text, TPOT = (E2EL − TTFT) ÷ (output tokens − 1), ITL = gaps between "
             "chunks, all in ms; p50 with its distribution-free 95% interval (– where the sample "
             "is too small to bound it); goodput = requests meeting every SLO.")
    data = pd.concat(frames, ignore_index=True).drop(columns=["defaults", "notes", "client"],
                                                      errors="ignore")
    return [Section("serving", "Serving", intro, pd.concat(tables, ignore_index=True), data, SERVING_RIGHT,
                    notes=list(dict.fromkeys([*search_lines, *notes])))]


def _sweep_section(serving: dict[str, pd.DataFrame], published: pd.DataFrame,
                   curves: dict[str, pd.DataFrame]) -> Section | None:
    """Latency–throughput over the serving sweeps: None unless a series has two load levels."""
    frames = [f for f in serving.values() if not f.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not has_sweep(sweep_points(frame)):
        return None
    data = sweep_table(frame)
    ms = lambda x: _num(x, ",.1f")  # noqa: E731
    table = pd.DataFrame({
        "series": data["series"],
        "load": [load_text(k, v) for k, v in zip(data["load_kind"], data["load"], strict=True)],
        "out tok/s": data["output_tps"].map(_num),
        "req/s": data["request_rate"].map(lambda x: _num(x, ",.2f")),
        "TTFT p50": data["ttft_p50"].map(ms), "TTFT p99": data["ttft_p99"].map(ms),
        "TPOT p50": data["tpot_p50"].map(ms), "TPOT p99": data["tpot_p99"].map(ms),
        "tok/s per user": data["tps_per_user"].map(_num),
    })
    if data["goodput_rate"].notna().any():
        table["goodput"] = [f"{s:.0%} ({r:.2f} req/s)" if not pd.isna(r) else "–"
                            for s, r in zip(data["goodput_share"], data["goodput_rate"], strict=True)]
    table["Pareto"] = data["pareto"].map(lambda p: "yes" if p else "")
    plots, missing = serving_plots(frame, published, curves)
    intro = ("Each series is one run, backend, model and workload with its load level (cN, rR) and "
             "request count (nN, durS, warmN) left out: the points of one sweep, ordered by load. "
             "Latencies in ms; tok/s per user = 1000 ÷ median TPOT; Pareto: no other load level of the "
             "series has both more aggregate and more per-user tok/s. Failed cases are left out here "
             "(the Serving table lists them).")
    return Section("serving_sweep", "Serving: latency–throughput", intro, table, data,
                   ("load", "out tok/s", "req/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
                    "tok/s per user", "goodput"), plots, missing)


def _measured_roofline_section(measured: pd.DataFrame) -> Section:
    if measured.empty:
        return Section("measured_roofline", "Roofline of the measured decode", "No decode cases.",
                       pd.DataFrame(), measured)
    table = pd.DataFrame({
        "model": measured["model"].map(lambda m: str(m).rsplit("/", 1)[-1]),
        "quant": measured["quant"].fillna("–"), "test": measured["test"], "batch": measured["batch"],
        "tok/s": measured["tps"].map(_num),
        "bytes/token": measured["bytes_per_token"].map(cmp.fmt_bytes), "device": measured["device"],
        "bandwidth": measured["bandwidth_gbs"].map(lambda x: f"{_num(x)} GB/s"),
        "ceiling": measured["ceiling_tps"].map(_num), "fraction": measured["fraction"].map(cmp.fmt_pct),
        "bytes from": measured["shape_from"], "notes": measured["notes"],
    })
    intro = ("Bytes read per decoded token = active weights at their per-tensor quant types (routed "
             "experts k of n) + KV cache over the mean attended context + recurrent state; ceiling = "
             "bandwidth ÷ bytes/token; fraction = measured median ÷ ceiling. This machine's bandwidth "
             "is the copy bandwidth measured when the run started.")
    return Section("measured_roofline", "Roofline of the measured decode", intro, table, measured,
                   ("tok/s", "bytes/token", "bandwidth", "ceiling", "fraction", "batch"))


def _published_section(published: pd.DataFrame) -> Section:
    def fraction(row: pd.Series) -> str:
        lo, hi = row["fraction_low"], row["fraction_high"]
        return cmp.fmt_pct(hi) if lo == hi or pd.isna(lo) else f"{cmp.fmt_pct(lo)}–{cmp.fmt_pct(hi)}"

    table = pd.DataFrame({
        "model": published["model"], "device": published["device"], "engine": published["engine"],
        "quant": published["quant"], "batch": published["batch"], "claimed": published["claimed"],
        "bandwidth": published["bandwidth_gbs"].map(lambda x: f"{_num(x, ',.0f')} GB/s"),
        "bytes/token": published["bytes_per_token"].map(cmp.fmt_bytes),
        "ceiling": published["ceiling_tps"].map(lambda x: _num(x, ",.0f")), "bound": published["bound"],
        "fraction": published.apply(fraction, axis=1), "verdict": published["verdict"],
        "heaviest quant within": published["heaviest_quant_within"], "assumptions": published["assumptions"],
    })
    intro = ("Each published speed against the ceiling of its device at its quant (computed from the "
             "catalog model's real tensor shapes and llama.cpp's per-tensor types; BF16 for vLLM). "
             "With no context stated, KV-cache reads are left out, so the ceiling is an upper bound "
             "and a claim above it is over the physical limit. `heaviest quant within`: the heaviest "
             "quant at which the claim stays under the ceiling.")
    return Section("published", "Published figures vs the physical limit", intro, table, published,
                   ("batch", "claimed", "bandwidth", "bytes/token", "ceiling", "fraction"))


def _closest_section(closest: pd.DataFrame) -> Section:
    table = closest.assign(**{"best fraction": closest["best fraction"].map(cmp.fmt_pct)})
    return Section("closest", "Closest to the limit, by engine", "The best fraction of the ceiling each "
                   "engine reaches (published claims and this machine's runs).", table, closest,
                   ("best fraction", "claims"))


def _projection_section(proj: pd.DataFrame) -> Section:
    if proj.empty:
        return Section("projection", "Projection to the catalog devices",
                       "No projection: no measured decode case has a known ceiling at a published "
                       "figure's batch.", pd.DataFrame(), proj)
    table = pd.DataFrame({
        "figure": proj["figure"], "device": proj["device"], "published": proj["published"],
        "this machine's fraction": proj["local_fraction"].map(cmp.fmt_pct),
        "fraction from": proj["fraction_from"],
        "predicted": proj["predicted_tps"].map(lambda x: f"{_num(x)} tok/s"),
        "published ÷ predicted": proj["published_over_predicted"].map(lambda x: _num(x, ".2f")),
        "assumptions": proj["assumptions"],
    })
    intro = ("Predicted tok/s on a catalog device = the fraction of its ceiling this machine reached × "
             "that device's ceiling for the published figure's model and quant. Above 1: the vendor's "
             "setup uses its bandwidth better than this one does; below 1: worse.")
    return Section("projection", "Projection to the catalog devices", intro, table, proj,
                   ("published", "this machine's fraction", "predicted", "published ÷ predicted"))


def _memory_section(memory: pd.DataFrame, devices: list[Device]) -> Section:
    names = [d.name for d in devices if d.memory_gb]
    table = pd.DataFrame({"requirement": memory["what"], "quant": memory["quant"],
                          "bytes": memory["bytes"].map(cmp.fmt_bytes),
                          "published need": memory["published_need"],
                          "check": memory["check"]})
    for name in names:
        table[name] = memory[name]
    intro = ("Measured peak resident memory and the published memory, RAM and file figures, each "
             "against every device's memory (fits / does not fit; the OS takes a share of a device's "
             "memory too; devices whose memory size is unknown are left out). `check` compares published "
             "figures with tokbench's predicted file size.")
    return Section("memory", "Memory: fits / does not fit", intro, table, memory, ("bytes",))


def _devices_section(devices: list[Device]) -> Section:
    data = pd.DataFrame([{
        "device": d.name, "kind": d.kind, "bandwidth_gbs": d.bandwidth_gbs, "memory_gb": d.memory_gb,
        "tdp": d.tdp_shown,
        "compute": ", ".join(f"{k} {v:g}" for k, v in (d.compute or {}).items()) or "unknown",
        "source": d.source_title + (f" ({d.source_url})" if d.source_url else ""), "notes": d.notes,
    } for d in devices])
    table = data.assign(
        bandwidth_gbs=data["bandwidth_gbs"].map(lambda x: "unknown" if pd.isna(x) else f"{x:g} GB/s"),
        memory_gb=data["memory_gb"].map(lambda x: "unknown" if pd.isna(x) else f"{x:.0f} GB"))
    table = table.rename(columns={"bandwidth_gbs": "bandwidth", "memory_gb": "memory"})
    return Section("devices", "Devices", "Vendor peaks (derived ones say so in the notes) and this "
                   "machine's measured profile.", table, data, ("bandwidth", "memory"))


# -- building ------------------------------------------------------------------------------------------
def load_runs(store: Store, refs: list[str]) -> list[cmp.RunData]:
    ids = list(dict.fromkeys(store.resolve_run(r) for r in refs))
    return [cmp.RunData(store.run(i), cases_frame(store, i)) for i in ids]


def build_report(store: Store, refs: list[str], against: str | None = None) -> Report:
    """The report over the given runs; `against="published"` adds the registry comparison."""
    runs = load_runs(store, refs)
    figures, catalog = reference()
    measured = cmp.measured_roofline(runs, catalog)
    warnings = [w for rd in runs for w in _failures(rd, store)]
    warnings += [f"run {rd.run['run_id']} was contended: {len(rd.run['contended'])} other tokbench "
                 "run(s) were live on its host while it measured" for rd in runs
                 if rd.run.get("contended")]
    resident = int(measured["cache_resident"].sum()) if not measured.empty else 0
    if resident:
        warnings.append(f"{resident} decode case(s) have weights that fit in the L3 cache: their "
                        "fraction of the DRAM-bandwidth ceiling can exceed 100% and says little")
    serving = _serving_frames(store, runs)
    serving_sections = _serving_section(runs, serving, _search_lines(store, runs))
    sections = [_measured_section(runs), *serving_sections, _measured_roofline_section(measured)]
    empty = pd.DataFrame(columns=["device", "device_key", "model", "engine", "metric", "batch", "claimed_low",
                                  "claimed_high", "ceiling_tps", "quant", "fraction_low", "fraction_high"])
    published, curves = empty, {}
    devices = cmp.report_devices(runs, catalog) if against else [cmp.local_device(rd.run) for rd in runs]
    memory_figures = figures if against else []
    if against == "published":
        published = cmp.published_roofline(figures, catalog)
        over = published[published["verdict"] == "OVER THE CEILING"]
        warnings += [f"published claim over the physical ceiling: {r['claimed']} for {r['model']} on "
                     f"{r['device']} ({r['quant']}) > ceiling {r['ceiling_tps']:,.0f} tok/s"
                     for _, r in over.iterrows()]
        sections += [_published_section(published),
                     _closest_section(cmp.closest_to_limit(published, measured)),
                     _projection_section(cmp.projection(measured, published, figures))]
        for f in figures:
            if f.metric == "aggregate_tps" and catalog.get(f.device):
                curves[f"{f.model_as_given} on {catalog[f.device].name}"] = cmp.ceiling_curve(
                    f, catalog[f.device], [1, 4, 16, 64, 256, 1024, 4096])
    sweep = _sweep_section(serving, published, curves)
    if sweep is not None:
        sections.insert(1 + len(serving_sections), sweep)
    memory = cmp.memory_table(measured, memory_figures, devices)
    sections += [_memory_section(memory, devices), _devices_section(devices)]
    plots, missing = all_plots(measured, published, memory, curves)
    sources = []
    if against:
        seen = {}
        for f in figures:
            for s in f.sources:
                seen[s.key] = s
        sources = [(f"{s.title} ({s.author + ', ' if s.author else ''}{s.date})", s.url)
                   for s in seen.values()]
    return Report("tokbench report", [_run_line(rd, store) for rd in runs], warnings, sections, plots,
                  missing, sources)


# -- writers ------------------------------------------------------------------------------------------
def _md_figures(plots: list[Plot], missing: list[str], plot_dir: Path | None, link_base: str) -> list[str]:
    """Markdown for figures: each written to plot_dir as a PNG and linked (nothing without one)."""
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    lines = []
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        for p in plots:
            write_output(plot_dir / f"{p.key}.png", p.png)
            lines += [f"### {p.title}", "", esc(p.caption), "", f"![{p.title}]({link_base}{p.key}.png)", ""]
    return lines + [f"- not drawn: {esc(m)}" for m in missing]


def _html_figures(plots: list[Plot], missing: list[str]) -> list[str]:
    """HTML for figures: each embedded as a data URI."""
    e = html.escape
    parts = []
    for p in plots:
        data = base64.b64encode(p.png).decode()
        parts.append(f'<figure><img alt="{e(p.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption><b>{e(p.title)}</b>. {e(p.caption)}</figcaption></figure>")
    if missing:
        parts += ["<ul>", *[f"<li>not drawn: {e(m)}</li>" for m in missing], "</ul>"]
    return parts


_NO_PLOT_DIR = "_Plots are written with `-o FILE.md` (beside it) and embedded in `--format html`._"


def to_markdown_text(report: Report, plot_dir: Path | None = None, link_base: str = "") -> str:
    """GitHub Markdown. With plot_dir, the plots are written there as PNGs and linked."""
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    lines = [f"# {report.title}", ""]
    lines += [f"- {esc(r)}" for r in report.runs] + [""]
    if report.warnings:
        lines += [f"> ⚠ {esc(w)}  " for w in report.warnings] + [""]
    for s in report.sections:
        lines += [f"## {s.title}", "", esc(s.intro), ""]
        if s.notes:
            lines += [f"- {esc(n)}" for n in s.notes] + [""]
        if not s.table.empty:
            lines += [to_markdown(s.table, right=s.right)]
        if s.plots and plot_dir is None:
            lines += [_NO_PLOT_DIR, ""]
        if s.plots or s.missing_plots:
            lines += _md_figures(s.plots, s.missing_plots, plot_dir, link_base)
            lines += [""] if lines[-1] else []
    lines += ["## Plots", ""]
    if plot_dir is None:
        lines += [_NO_PLOT_DIR, ""]
    lines += _md_figures(report.plots, report.missing_plots, plot_dir, link_base)
    if report.sources:
        lines += ["", "## Sources", ""] + [f"- {esc(t)}: {esc(u)}" for t, u in report.sources]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;
padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}.warn{background:#fff3cd;
border:1px solid #e0c060;padding:0.5em 1em}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:13px;color:#555}"""


def to_html(report: Report) -> str:
    """One self-contained page: no scripts, no external resources, every string escaped."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(report.title)}</h1>", "<ul>", *[f"<li>{e(r)}</li>" for r in report.runs], "</ul>"]
    if report.warnings:
        parts += ['<div class="warn"><ul>', *[f"<li>⚠ {e(w)}</li>" for w in report.warnings], "</ul></div>"]
    for s in report.sections:
        parts += [f"<h2>{e(s.title)}</h2>", f"<p>{e(s.intro)}</p>"]
        if s.notes:
            parts += ["<ul>", *[f"<li>{e(n)}</li>" for n in s.notes], "</ul>"]
        if not s.table.empty:
            parts.append(s.table.to_html(index=False, escape=True, border=0, na_rep="–"))
        parts += _html_figures(s.plots, s.missing_plots)
    parts.append("<h2>Plots</h2>")
    parts += _html_figures(report.plots, report.missing_plots)
    if report.sources:
        parts += ["<h2>Sources</h2><ul>", *[f"<li>{e(t)}: {e(u)}</li>" for t, u in report.sources], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_csv_files(report: Report) -> dict[str, str]:
    """File name → CSV text: each section's raw values, text cells guarded against spreadsheet
    formulas."""
    return {f"{s.key}.csv": csv_text(s.data) for s in report.sections if not s.data.empty}


def write(report: Report, fmt: str, output: Path | None) -> str | None:
    """Render and write; return text for stdout when there is no output path."""
    if fmt == "csv":
        from harness.common.errors import TokbenchError

        if output is None:
            raise TokbenchError("--format csv writes one file per table: give -o DIR")
        output.mkdir(parents=True, exist_ok=True)
        for name, text in to_csv_files(report).items():
            write_output(output / name, text)
        return None
    render: dict[str, Callable[[], str]] = {
        "html": lambda: to_html(report),
        "md": lambda: to_markdown_text(report, output.with_name(output.stem + "_plots") if output else None,
                                       f"{output.stem}_plots/" if output else ""),
    }
    text = render[fmt]()
    if output is None:
        return text
    write_output(output, text)
    return None
