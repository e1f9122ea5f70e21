"""Hugging Face Transformers through the real CLI and worker, on CPU torch: a tiny synthetic llama
for every workload shape, LFM2-350M (hybrid attention + short-conv cache) for depth and batching,
and a checkpoint the engine cannot load."""

from __future__ import annotations

import json
import venv
from pathlib import Path

import pandas as pd
import pytest

import results
from harness.cli.main import main

pytestmark = pytest.mark.engine

LLAMA = "synth:tiny-llama@F16"
LFM2 = "synth:lfm2-350m@F16"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("transformers")
    broken = tmp / "broken"  # config.json does not match the weights: the engine refuses it
    assert main(["models", "tiny", "--arch", "llama", str(broken)]) == 0
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    store = tmp / "results.db"
    (tmp / "suite.toml").write_text(f"""
repetitions = 3
[defaults]
backend = "transformers"
[[benchmark]]
models = ["{LLAMA}"]
workloads = ["pp32", "tg8", "pp32+tg8", "pp16@d64"]
batch = [1, 4]
[[benchmark]]
models = ["{broken}"]
workloads = ["tg4"]
[[benchmark]]
models = ["{LFM2}"]
workloads = ["pp32+tg8"]
batch = [1, 4]
[[benchmark]]
models = ["{LFM2}"]
workloads = ["tg8@d64"]
""")
    assert main(["--store", str(store), "run", str(tmp / "suite.toml"), "--no-bandwidth"]) == 1
    frame = results.load(store=store)
    frame.attrs["store"] = str(store)
    frame.attrs["broken"] = str(broken)
    return frame


def test_every_case_but_the_broken_model_gives_positive_rates(run: pd.DataFrame) -> None:
    failed = run[run["status"] != "ok"]
    assert list(failed["model"]) == [run.attrs["broken"]]
    assert "could not load" in failed["error"].iloc[0] and "\n" not in failed["error"].iloc[0]
    ok = run[run["status"] == "ok"]
    assert set(ok["test"]) == {"pp32", "tg8", "pp16@d64", "tg8@d64"}
    assert (ok["tps_median"] > 0).all() and (ok["n_trials"] == 3).all()
    assert (ok["peak_rss_bytes"] > 0).all() and (ok["kv_cache_bytes"] > 0).all()
    assert (ok["model_n_params"] > 0).all() and (ok["quant"] == "F16").all()
    assert ok[ok["model"] == LFM2]["model_desc"].str.contains("Lfm2ForCausalLM").all()


def test_each_model_loads_once(run: pd.DataFrame) -> None:
    cases = run[run["status"] == "ok"].drop_duplicates("case_id")
    for model, rows in cases.groupby("model"):
        loaded = rows[rows["model_reused"] == 0]
        assert len(loaded) == 1 and loaded["load_s"].iloc[0] > 0, model
        assert (rows[rows["model_reused"] == 1]["load_s"] == 0).all() and len(rows) > 1


def test_phase_token_counts_and_step_stamps(run: pd.DataFrame) -> None:
    """n_tokens counts every sequence and not the depth; decode has one stamp per step."""
    trials = results.load(run=run["run_id"].iloc[0], level="trials", store=run.attrs["store"])
    cases = run.drop_duplicates("case_id").set_index("case_id")
    for (case_id, phase), rows in trials.groupby(["case_id", "phase"]):
        case = cases.loc[case_id]
        n = case["n_prompt"] if phase == "pp" else case["n_gen"]
        assert (rows["n_tokens"] == n * case["param_batch"]).all(), (case["test"], phase)
        if phase == "tg":
            for stamps, duration in zip(rows["token_ns"], rows["duration_ns"], strict=True):
                assert len(stamps) == n and stamps == sorted(stamps) and stamps[-1] == duration


def test_prefill_is_faster_per_token_than_decode(run: pd.DataFrame) -> None:
    both = run[(run["workload"] == "pp32+tg8") & (run["param_batch"] == 1)]
    for model, rows in both.groupby("model"):
        rate = dict(zip(rows["phase"], rows["tps_median"], strict=True))
        assert rate["pp"] > rate["tg"], (model, rate)


def test_batched_decode_beats_one_sequence_in_aggregate(run: pd.DataFrame) -> None:
    """Four sequences per forward cost less than four forwards. How much less depends on the
    CPU: a compute-bound 2-core AMD EPYC measured 1.10× in CI (1.2× and more elsewhere), while
    four forwards one after another give 1.0×, so the bound is 1.05×."""
    decode = run[(run["workload"] == "pp32+tg8") & (run["phase"] == "tg")]
    for model, rows in decode.groupby("model"):
        by_batch = dict(zip(rows["param_batch"], rows["tps_median"], strict=True))
        assert by_batch[4] > 1.05 * by_batch[1], (model, by_batch)


def test_the_cache_holds_the_depth(run: pd.DataFrame) -> None:
    """LFM2's hybrid cache after tg8@d64 holds 72 positions per attention layer, after pp32+tg8
    40 (its conv state does not grow with them); every sequence of a batch has its own."""
    cases = run[run["model"] == LFM2].drop_duplicates("case_id")
    memory = {(w, b): kv for w, b, kv in zip(cases["workload"], cases["param_batch"],
                                             cases["kv_cache_bytes"], strict=True)}
    assert memory[("tg8@d64", 1)] > memory[("pp32+tg8", 1)] > 0, memory
    assert memory[("pp32+tg8", 4)] == 4 * memory[("pp32+tg8", 1)], memory


def test_missing_engine_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)  # an interpreter without transformers or torch
    rc = main(["--store", str(tmp_path / "r.db"), "run", "--backend", "transformers", "-m", LLAMA,
               "-w", "tg4", "--python", str(bare / "bin" / "python"), "--no-bandwidth"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tokbench: error: Transformers backend needs"), err
    assert "tokbench[transformers]" in err and "\n" not in err
