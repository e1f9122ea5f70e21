"""The published-figures registry and the device catalog: every seed figure once, with a source."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.common.errors import TokbenchError
from reports.comparison import check_figures, reference
from results.reference import load_devices, load_figures

# (catalog model, device, metric, low, high) of every figure in ../shared/seeds/, in base units.
SEED_FIGURES = [
    ("lfm2-24b-a2b", "ryzen-ai-max-plus-395", "decode_tps", 112, 112),
    ("lfm2-24b-a2b", "h100-sxm5", "decode_tps", 293, 293),
    ("lfm2-24b-a2b", "h100-sxm5", "aggregate_tps", 26_800, 26_800),
    ("lfm2-8b-a1b", "galaxy-s25", "decode_tps", 48.6, 48.6),
    ("lfm2-1.2b", "ryzen-ai-max-plus-395", "decode_tps", 235, 235),
    ("lfm2-1.2b", "apple-m4-pro", "decode_tps", 96, 96),
    ("lfm2-1.2b", "galaxy-s25-ultra", "decode_tps", 70, 70),
    ("lfm2-1.2b", "snapdragon-8-elite", "decode_tps", 82, 82),
    ("lfm2-1.2b", "amd-ryzen-npu", "decode_tps", 60, 60),
    ("llama-3.2-3b", "ryzen-ai-max-plus-395", "decode_tps", 30, 60),
    ("lfm2-1.2b", "ryzen-ai-max-plus-395", "memory_bytes", 853e6, 853e6),
    ("lfm2-1.2b", "apple-m4-pro", "memory_bytes", 722e6, 722e6),
    ("lfm2-1.2b", "galaxy-s25-ultra", "memory_bytes", 720e6, 720e6),
    ("lfm2-1.2b", "snapdragon-8-elite", "memory_bytes", 900e6, 900e6),
    ("lfm2-1.2b", "amd-ryzen-npu", "memory_bytes", 1600e6, 1600e6),
    ("lfm2-1.2b", "unspecified", "memory_bytes", 900e6, 900e6),  # browser, WebGPU
    *[("lfm2-24b-a2b", "unspecified", "file_bytes", gb * 1e9, gb * 1e9)
      for gb in (13.5, 14.4, 16.9, 19.6, 25.4, 47.7)],
    *[("lfm2-24b-a2b", "unspecified", "ram_min_bytes", gb * 1e9, gb * 1e9)
      for gb in (16, 18, 20, 24, 30, 52)],
    ("lfm2-24b-a2b", "unspecified", "ram_fits_bytes", 32e9, 32e9),
]


def test_every_seed_figure_once_with_its_source() -> None:
    figures, devices = reference()
    keys = [(f.model, f.device, f.metric, f.low, f.high) for f in figures]
    assert sorted(keys) == sorted(SEED_FIGURES)  # each exactly once, nothing else
    for f in figures:
        assert f.sources and all(s.title and s.date and s.url for s in f.sources)
        assert f.conditions and f.quote and isinstance(f.unstated, tuple)
        assert f.quant_for_roofline, f.id  # stated, or an assumption the report flags
    assert {f.device for f in figures} - {"unspecified"} <= devices.keys()


def test_unstated_quant_is_an_assumption_the_report_names() -> None:
    figures, _ = reference()
    s25 = next(f for f in figures if f.model == "lfm2-8b-a1b")
    assert s25.quant is None and s25.roofline_quant == "Q4_K_M"
    assert "quant not stated: Q4_K_M assumed" in s25.assumptions
    ryzen = next(f for f in figures if f.id == "lfm2-24b-a2b/ryzen-ai-max-plus-395/decode")
    assert ryzen.quant == "Q4_K_M" and not any("quant" in a for a in ryzen.assumptions)


def test_devices_state_each_spec_or_call_it_unknown() -> None:
    devices = load_devices()
    assert devices["h100-sxm5"].bandwidth_gbs == 3350 and devices["h100-sxm5"].memory_gb == 80
    assert devices["ryzen-ai-max-plus-395"].bandwidth_gbs == 256
    assert devices["ryzen-ai-max-plus-395"].tdp_w == (45, 120)
    assert devices["apple-m4-pro"].bandwidth_gbs == 273 and devices["apple-m4-pro"].tdp_w is None
    assert devices["amd-ryzen-npu"].bandwidth_gbs is None  # the article names no chip
    assert all(d.source_title and d.source_url and d.notes for d in devices.values())


def _write(tmp_path: Path, figure: str) -> Path:
    path = tmp_path / "published.toml"
    path.write_text('[source.s]\ntitle = "T"\ndate = "2026-01-01"\nurl = "https://x"\n\n[[figure]]\n'
                    + figure)
    return path


GOOD = '''id = "a"
model = "lfm2-1.2b"
model_as_given = "LFM2"
device = "h100-sxm5"
device_as_given = "H100"
quant = "Q8_0"
metric = "decode_tps"
value = 1
unit = "tok/s"
conditions = "c"
unstated = []
sources = ["s"]
quote = "q"
'''


@pytest.mark.parametrize(("change", "message"), [
    (("unstated = []\n", ""), "`unstated` must list"),
    (('quant = "Q8_0"\n', ""), "give `quant` when it is stated"),
    (('device = "h100-sxm5"', 'device = "pixel-9"'), "not in devices.toml"),
    (('sources = ["s"]', 'sources = ["nope"]'), "unknown source 'nope'"),
    (('conditions = "c"\n', ""), "`conditions` is missing"),
    (('unit = "tok/s"', 'unit = "tok/s"\nvalu = 3'), "unknown key 'valu'"),
])
def test_bad_figures_are_refused_in_one_line(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    load_figures(_write(tmp_path, GOOD))  # the unchanged figure loads
    with pytest.raises(TokbenchError, match=message) as info:
        load_figures(_write(tmp_path, GOOD.replace(*change)))
    assert "\n" not in str(info.value)


def test_a_device_must_name_its_unknown_specs(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    path.write_text('[device.x]\nname = "X"\nkind = "gpu"\nbandwidth_gbs = 1\nmemory_gb = 1\nunknown = []\n'
                    'source = { title = "t", url = "u" }\nnotes = "n"\n')
    with pytest.raises(TokbenchError, match="give `tdp_w` or list it in `unknown`"):
        load_devices(path)


def test_figures_name_catalog_models_and_priceable_quants(tmp_path: Path) -> None:
    from harness.models.quant_mix import FILE_TYPES

    check_figures(load_figures(_write(tmp_path, GOOD)), FILE_TYPES)
    with pytest.raises(TokbenchError, match="model 'lfm9' is not in the catalog"):
        check_figures(load_figures(_write(tmp_path, GOOD.replace('"lfm2-1.2b"', '"lfm9"'))), FILE_TYPES)
    with pytest.raises(TokbenchError, match=r"`roofline_quant` must name a llama\.cpp file type"):
        check_figures(load_figures(_write(tmp_path, GOOD.replace('"Q8_0"', '"INT8"'))), FILE_TYPES)
