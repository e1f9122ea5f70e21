"""`tokbench models list | synth | clone`: the synthetic-model catalog on the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from harness.common.errors import TokbenchError
from harness.models.catalog import CATALOG, TINY, ModelSpec, lookup

LIST_QUANTS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")


def catalog_rows(n_ctx: int = 4096) -> list[dict[str, Any]]:
    from harness.models import synthetic
    from harness.models.architectures import parameter_counts
    from harness.models.memory_estimate import ram_needed

    """One record per entry: config, parameter counts, predicted size and RAM per quant."""
    rows = []
    for spec in [*CATALOG.values(), *TINY.values()]:
        total, active = parameter_counts(spec)
        quants = spec.quants or LIST_QUANTS
        sizes = {q: synthetic.predicted_size(spec, q) for q in quants}
        rows.append({
            "name": spec.name, "arch": spec.arch, "tiny": spec.name in TINY,
            "config": {k: v for k, v in spec.__dict__.items() if k not in ("name", "arch")},
            "params_total": total, "params_per_token": active,
            "published_params": spec.published_params, "published_active": spec.published_active,
            "quants": {q: {"file_bytes": sizes[q], f"ram_bytes_ctx{n_ctx}": ram_needed(spec, sizes[q], n_ctx)}
                       for q in quants},
        })
    return rows


def _shape(spec: ModelSpec) -> str:
    text = f"{spec.n_layer}L h{spec.hidden} ff{spec.ff}"
    if spec.attn_layers is not None:
        text += f" attn×{len(spec.attn_layers)}"
    if spec.n_expert:
        text += f" {spec.n_expert}e top{spec.n_expert_used} eff{spec.expert_ff}"
    return text


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    rows = catalog_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title="synthetic models (size GB / RAM GB at 4k context)")
    for col in ("model", "arch", "shape", "params", "per token", *LIST_QUANTS):
        table.add_column(col, justify="right" if col not in ("model", "arch", "shape") else "left")
    for row, spec in zip(rows, [*CATALOG.values(), *TINY.values()], strict=True):
        cells = []
        for q in LIST_QUANTS:
            info = row["quants"].get(q)
            cells.append("–" if info is None else
                         f"{info['file_bytes'] / 1e9:.3g} / {info['ram_bytes_ctx4096'] / 1e9:.3g}")
        if spec.quants:
            cells[-1] = " ".join(f"{q}: {row['quants'][q]['file_bytes'] / 1e9:.3g}" for q in spec.quants)
        table.add_row(spec.name, spec.arch, _shape(spec), f"{row['params_total'] / 1e9:.3g}B",
                      f"{row['params_per_token'] / 1e9:.3g}B", *cells)
    console.print(table)
    console.print("sources: " + "; ".join(f"{s.name}: {s.source}" for s in CATALOG.values()),
                  highlight=False)
    return 0


def _progress_bar() -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn())


def cmd_synth(args: argparse.Namespace, console: Console) -> int:
    from harness.models import synthetic

    spec = lookup(args.name)
    quant = (args.quant or ("F16" if args.format == "hf" else "Q4_K_M")).upper()
    start = time.perf_counter()
    if args.format == "hf":
        from harness.models import hf_checkpoint

        if quant != "F16":
            raise TokbenchError(f"-q {quant}: Hugging Face checkpoints are written in F16; "
                                "drop -q or use --format gguf for other quants")
        with _progress_bar() as bar:
            task = bar.add_task(f"{spec.name} (Hugging Face layout, F16)",
                                total=hf_checkpoint.weights_bytes(spec))
            update = lambda n: bar.update(task, completed=n)  # noqa: E731
            out = (hf_checkpoint.write_hf(spec, args.out, progress=update) if args.out
                   else hf_checkpoint.ensure_hf(spec, progress=update, log=bar.console.print))
        console.print(f"{out} · {time.perf_counter() - start:.1f} s · a Hugging Face checkpoint "
                      f"directory for vLLM / MLX; use it as -m {out} or -m synth:{spec.name}@F16",
                      highlight=False)
        return 0
    total = synthetic.predicted_size(spec, quant)
    with _progress_bar() as bar:
        task = bar.add_task(f"{spec.name}@{quant}", total=total)
        update = lambda n: bar.update(task, completed=n)  # noqa: E731
        if args.out:
            path = synthetic.synthesize(spec, quant, args.out, progress=update)
        else:
            path = synthetic.ensure(spec, quant, progress=update, log=bar.console.print)
    seconds = time.perf_counter() - start
    console.print(f"{path} · {path.stat().st_size / 1e9:.3f} GB · {seconds:.1f} s · "
                  f"use it as -m synth:{spec.name}@{quant} or -m {path}", highlight=False)
    return 0


def cmd_clone(args: argparse.Namespace, console: Console) -> int:
    from harness.models import synthetic
    from harness.models.sources import resolve

    source = resolve(args.source).path
    target = Path(args.out or f"{source.stem}-twin.gguf")
    with _progress_bar() as bar:
        task = bar.add_task(f"twin of {source.name}", total=source.stat().st_size)
        synthetic.clone(source, target, progress=lambda n: bar.update(task, completed=n))
    console.print(f"{target}: same header as {source.name}, random weights", highlight=False)
    return 0


TINY_BY_ARCH = {"llama": "tiny-llama", "lfm2": "tiny-lfm2", "lfm2moe": "tiny-lfm2moe"}


def cmd_tiny(args: argparse.Namespace, console: Console) -> int:
    """A small random-weight model of a real architecture, for smoke tests of any engine."""
    args.name, args.quant = TINY_BY_ARCH[args.arch], (args.quant or "F16")
    args.out = args.dir
    if args.format == "gguf" and not args.dir.endswith(".gguf"):
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        args.out = str(Path(args.dir) / f"{args.name}-{args.quant.upper()}.gguf")
    return cmd_synth(args, console)


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="synthetic models: list the catalog, generate, clone")
    msub = models.add_subparsers(dest="models_command", required=True)
    lst = msub.add_parser("list", help="catalog with parameter counts, predicted sizes and RAM")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_list)
    synth = msub.add_parser("synth", help="generate a synthetic GGUF (cached)")
    synth.add_argument("name", help="catalog entry, e.g. lfm2-24b-a2b")
    synth.add_argument("-q", "--quant",
                       help="llama.cpp file type, e.g. Q4_0, Q8_0, F16 (default Q4_K_M; F16 for --format hf; "
                            "an unknown one is refused with the full list)")
    synth.add_argument("-o", "--out", help="write here instead of the cache")
    synth.add_argument("--format", choices=("gguf", "hf"), default="gguf",
                       help="gguf (llama.cpp) or hf: a Hugging Face directory, F16 (vLLM, MLX)")
    synth.set_defaults(func=cmd_synth)
    tiny = msub.add_parser("tiny", help="a tiny random-weight model (tests, engine smoke runs)")
    tiny.add_argument("--arch", choices=sorted(TINY_BY_ARCH), default="lfm2",
                      help="architecture (default lfm2)")
    tiny.add_argument("--format", choices=("gguf", "hf"), default="hf",
                      help="hf: Hugging Face directory (vLLM, MLX; default); gguf: llama.cpp file")
    tiny.add_argument("-q", "--quant", help="GGUF file type (default F16)")
    tiny.add_argument("dir", help="output directory (gguf: the file goes in it, unless DIR ends .gguf)")
    tiny.set_defaults(func=cmd_tiny)
    clone = msub.add_parser("clone", help="a random-weight twin of a GGUF (same header)")
    clone.add_argument("source", help="GGUF path or model source (pkg:…)")
    clone.add_argument("-o", "--out", help="output file (default ./<name>-twin.gguf)")
    clone.set_defaults(func=cmd_clone)
