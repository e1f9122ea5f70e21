from pathlib import Path

import pytest

from backends.base import BackendError
from harness.cli.main import build_parser
from harness.cli.shared import suite_from_args
from harness.common.errors import TokbenchError
from harness.execution.suite import expand, load_suite
from harness.execution.workloads import parse_workload


def _cli_suite(*argv: str):
    args = build_parser().parse_args(["run", *argv])
    return suite_from_args(args)


def test_lists_expand_to_a_grid_like_llama_bench() -> None:
    suite = _cli_suite("-m", "a.gguf,b.gguf", "-t", "1,2", "-w", "pp128,pp512,tg32")
    assert len(suite.cases) == 2 * 2 * 3
    # models outermost, workloads innermost: a model is loaded in one contiguous block
    assert [c.model for c in suite.cases] == ["a.gguf"] * 6 + ["b.gguf"] * 6
    first = suite.cases[:3]
    assert {c.param_dict["threads"] for c in first} == {1}
    assert [c.workload.name for c in first] == ["pp128", "pp512", "tg32"]


def test_depth_suffix_produces_depth_cases() -> None:
    suite = _cli_suite("-m", "a.gguf", "-t", "2", "-w", "tg128,tg128@d1024,tg128@d4096")
    assert [c.workload.n_depth for c in suite.cases] == [0, 1024, 4096]


def test_load_parameters_vary_outside_context_parameters() -> None:
    cases = expand(["llama.cpp"], ["m.gguf"], [parse_workload("tg8")],
                   {"mmap": [True, False], "threads": [1, 2]}, "test")
    assert [(c.param_dict["mmap"], c.param_dict["threads"]) for c in cases] == [
        (True, 1), (True, 2), (False, 1), (False, 2)]


def test_defaults_fill_unset_parameters() -> None:
    (case,) = _cli_suite("-m", "a.gguf", "-w", "tg8").cases
    params = case.param_dict
    assert params["n_batch"] == 2048 and params["n_ubatch"] == 512
    assert params["threads"] >= 1 and params["flash_attn"] == "auto"


@pytest.mark.parametrize("threads", ["0", "-1", "1,0"])
def test_threads_must_be_positive(threads: str) -> None:
    with pytest.raises(TokbenchError, match="threads must be ≥ 1"):
        _cli_suite("-m", "a.gguf", "-t", threads)


def test_quants_fill_the_model_template() -> None:
    suite = _cli_suite("-m", "m/LFM2-1.2B-{quant}.gguf", "-q", "Q4_0,Q8_0", "-w", "tg8")
    assert [c.model for c in suite.cases] == ["m/LFM2-1.2B-Q4_0.gguf", "m/LFM2-1.2B-Q8_0.gguf"]
    with pytest.raises(TokbenchError, match=r"no \{quant\} placeholder"):
        _cli_suite("-m", "plain.gguf", "-q", "Q4_0")


def test_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        _cli_suite("--backend", "nope", "-m", "a.gguf")
    from harness.cli.main import main

    assert main(["run", "--backend", "nope", "-m", "a.gguf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokbench: error: unknown backend 'nope'") and err.count("\n") == 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_suite_file_expands_groups(tmp_path: Path) -> None:
    path = _write(tmp_path, """
name = "cpu"
repetitions = 3
timeout = 60

[defaults]
threads = [1, 2]

[[benchmark]]
models = ["a.gguf", "b.gguf"]
workloads = ["pp64", "tg16@d128"]

[[benchmark]]
models = ["q-{quant}.gguf"]
quants = ["Q4_0", "Q8_0"]
workloads = ["tg8"]
threads = 1

[[benchmark]]
model = "c.gguf"
workload = "pp64+tg16"
threads = 2
flash_attn = "on"
""")
    suite = load_suite(path)
    assert suite.name == "cpu" and suite.repetitions == 3 and suite.timeout_s == 60
    assert len(suite.cases) == 2 * 2 * 2 + 2 + 1
    assert [c.model for c in suite.cases[8:10]] == ["q-Q4_0.gguf", "q-Q8_0.gguf"]
    last = suite.cases[-1]
    assert last.model == "c.gguf" and last.param_dict["threads"] == 2
    assert last.param_dict["flash_attn"] == "on"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[benchmark]]\nmodels = ["a.gguf"]\nthread = 2\n',
         "unknown key 'thread' (did you mean 'threads'?)"),
        ('repetition = 3\n[[benchmark]]\nmodels = ["a.gguf"]\n', "unknown key 'repetition'"),
        ('[[benchmark]]\nmodels = ["a.gguf"]\nthreads = 0\n', "threads must be ≥ 1"),
        ('[[benchmark]]\nmodels = ["a.gguf"]\nworkloads = ["pp"]\n', "unknown workload 'pp'"),
        ('[[benchmark]]\nworkloads = ["pp8"]\n', "no model"),
        ("name = 'x'\n", "at least one [[benchmark]]"),
        ("[[benchmark]\n", "not valid TOML"),
    ],
)
def test_suite_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TokbenchError) as err:
        load_suite(_write(tmp_path, text))
    assert message in str(err.value)
    assert "suite.toml" in str(err.value)
    assert "\n" not in str(err.value)


def test_engine_parameters_apply_to_the_backends_that_take_them() -> None:
    cases = expand(["llama.cpp", "vllm", "mlx"], ["m"], [parse_workload("tg8")],
                   {"batch": [1, 8], "enforce_eager": [True]}, "cli")
    by_backend = {b: [c.param_dict for c in cases if c.backend == b] for b in ("llama.cpp", "vllm", "mlx")}
    assert all(len(v) == 2 and {p["batch"] for p in v} == {1, 8} for v in by_backend.values())
    assert all(p["enforce_eager"] is True for p in by_backend["vllm"])
    assert "enforce_eager" not in by_backend["mlx"][0] and "threads" in by_backend["llama.cpp"][0]
    with pytest.raises(TokbenchError, match="does not take parameter"):
        expand(["mlx"], ["m"], [parse_workload("tg8")], {"enforce_eager": [True]}, "cli")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("gpu_memory_utilization", "1.5", "not a fraction"),
    ("batch", "0", "batch must be ≥ 1"),
    ("dtype", "int4", "dtype must be one of"),
])
def test_engine_parameter_values_are_checked(flag: str, value: str, message: str) -> None:
    from harness.execution.params import PARAMS, parse_list

    with pytest.raises(TokbenchError, match=message):
        parse_list(PARAMS[flag], value, f"--{flag}")


def test_serving_suite_file_and_command_line(tmp_path: Path) -> None:
    """Serving loads in a suite file, with the run's request count and SLOs; one pass each by
    default; every server parameter restarts the server, so cases differing in one are not
    served by one worker."""
    from harness.execution.suite import load_key

    suite_file = tmp_path / "serve.toml"
    suite_file.write_text('requests = 50\nslo = "ttft=500ms,tpot=50ms"\n[[benchmark]]\n'
                          'backend = "openai"\nurl = "http://127.0.0.1:8000/v1"\nmodels = ["m"]\n'
                          'workloads = ["c16:in512:out128", "r8:in512:out128:n20"]\n')
    suite = load_suite(suite_file)
    assert [c.workload.name for c in suite.cases] == ["c16:in512:out128:n50", "r8:in512:out128:n20"]
    assert suite.repetitions == 1 and suite.slo == {"ttft": 500.0, "tpot": 50.0}
    given = suite_from_args(build_parser().parse_args(["run", str(suite_file), "--requests", "7",
                                                       "--slo", "e2el=2s"]))
    assert [c.workload.name for c in given.cases] == ["c16:in512:out128:n7", "r8:in512:out128:n20"]
    assert given.slo == {"e2el": 2000.0}  # the command line wins over the file
    args = build_parser().parse_args(["run", "--backend", "llama.cpp-server", "-m", "x.gguf", "-t", "1,2",
                                      "-w", "c4:in64:out16", "--requests", "10"])
    cases = suite_from_args(args).cases
    assert [c.workload.requests for c in cases] == [10, 10]
    assert load_key(cases[0]) != load_key(cases[1])  # threads restart a managed server


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend", "openai", "-m", "m", "-w", "c4:in8:out8"], "needs --url"),
    (["--backend", "openai", "--url", "http://x/v1", "-m", "m", "-w", "pp512"], "runs serving workloads"),
    (["-w", "r8:in8:out8"], "is a serving load"),
    (["--backend", "openai", "--url", "http://x/v1", "-m", "m", "-w", "c1:in8:out8", "--slo", "ttft=fast"],
     "--slo: bad SLO"),
])
def test_serving_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TokbenchError, match=message):
        suite_from_args(build_parser().parse_args(["run", *argv]))


def test_managed_server_command_lines() -> None:
    """Engine arguments map onto each server's own flags."""
    from backends.managed_servers import LlamaCppServer, MlxServer, VllmServer

    params = {**LlamaCppServer.defaults, "threads": 2, "flash_attn": "on"}
    argv = LlamaCppServer("m.gguf", params, 0).argv(8000, 640)
    assert argv[1:3] == ["-m", "llama_cpp.server"] and "--interrupt_requests" in argv
    assert argv[argv.index("--n_threads") + 1] == "2" and argv[argv.index("--flash_attn") + 1] == "True"
    binary = LlamaCppServer("m.gguf", {**params, "server_binary": "/opt/llama-server", "parallel": 4}, 0)
    argv = binary.argv(8000, 640)
    assert argv[0] == "/opt/llama-server" and argv[argv.index("-np") + 1] == "4"
    assert argv[argv.index("-c") + 1] == str(4 * 640)  # llama-server splits -c over its slots
    vllm = {**VllmServer.defaults, "enforce_eager": True, "dtype": "bfloat16"}
    argv = VllmServer("dir", vllm, 0).argv(8000, 640)
    assert "--enforce-eager" in argv and argv[argv.index("--max-model-len") + 1] == "640"
    assert argv[argv.index("--dtype") + 1] == "bfloat16" and "--quantization" not in argv
    argv = MlxServer("dir", MlxServer.defaults, 0).argv(8000, 640)
    assert argv[1:4] == ["-m", "mlx_lm", "server"] and "--prefill-step-size" in argv
