import pytest

from harness.common.errors import TokbenchError
from harness.execution.workloads import Workload, parse_workload


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pp512", Workload(512, 0, 0)),
        ("tg128", Workload(0, 128, 0)),
        ("pp512+tg128", Workload(512, 128, 0)),
        ("tg128@d4096", Workload(0, 128, 4096)),
        ("pp64+tg16@d256", Workload(64, 16, 256)),
    ],
)
def test_parse_round_trips(text: str, expected: Workload) -> None:
    wl = parse_workload(text)
    assert wl == expected
    assert wl.name == text


def test_phases_and_context() -> None:
    wl = parse_workload("pp512+tg128@d1024")
    assert wl.phases == ("pp", "tg")
    assert wl.n_ctx == 1024 + 512 + 128
    assert parse_workload("tg8").phases == ("tg",)


@pytest.mark.parametrize("text", ["", "pp", "pp5x", "tg-1", "pp512+", "+tg128", "@d128", "pp0", "512",
                                  "pp512tg128"])
def test_bad_syntax_is_a_clear_error(text: str) -> None:
    with pytest.raises(TokbenchError, match="workload") as err:
        parse_workload(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["c16:in512:out128", "r8:in512:out128", "r0.5:const:max4:in64-128:out16",
                                  "r8:burst0.25:in32:out8:prefix16:n100:dur60s:warm0:chat"])
def test_serving_names_round_trip(text: str) -> None:
    wl = parse_workload(text)
    assert wl.serving and wl.name == text
    assert parse_workload(wl.name) == wl


def test_serving_fields() -> None:
    wl = parse_workload("r2.5:const:max4:in64-128:out16:prefix8:dur2m:warm3:chat")
    assert (wl.rate, wl.arrival, wl.max_concurrency, wl.input_len, wl.output_len) == (
        2.5, "constant", 4, (64, 128), (16, 16))
    assert (wl.prefix_len, wl.duration_s, wl.requests, wl.warmup, wl.endpoint) == (8, 120.0, None, 3, "chat")
    assert wl.n_ctx == 128 + 16  # what a server must hold for the longest request
    closed = parse_workload("c16:in512:out128")
    assert closed.concurrency == 16 and closed.rate is None and closed.warmup_requests() == 16
    assert closed.with_requests(None).requests == 200  # the default count
    assert closed.with_requests(50).name == "c16:in512:out128:n50"
    assert parse_workload("c4:in8:out2:dur10s").with_requests(50).requests is None  # duration rules
    assert parse_workload("r40:in8:out2").warmup_requests() == 16  # one wave, at most 16


@pytest.mark.parametrize("text", ["c16", "c16:in512", "r8:c4:in8:out8", "c4:in8:out8:const", "c0:in8:out8",
                                  "r8:in8:out8:burst0", "c1:in8:out8:prefix8", "c1:in8-4:out8",
                                  "c1:in8:out8:zz", "c1:in8:out8:n5:n6", "r8:const:burst2:in8:out8"])
def test_bad_serving_syntax_is_a_clear_error(text: str) -> None:
    with pytest.raises(TokbenchError, match="workload") as err:
        parse_workload(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["sweep:in128:out32", "sweep:in128:out32:n40:max64",
                                  "capacity:in512:out128:p99", "capacity:in64:out8:chat:n30:max8:p90:rate",
                                  "capacity:in16:out4:p95:conf90:rep1", "c4:in64:out16:chat:turns3"])
def test_search_and_turn_names_round_trip(text: str) -> None:
    wl = parse_workload(text)
    assert wl.name == text and parse_workload(wl.name) == wl


def test_search_steps() -> None:
    sweep = parse_workload("sweep:in128:out32:max64")
    assert sweep.search and sweep.kind == "sweep" and sweep.max_level == 64
    assert sweep.n_prompt == 128 and sweep.n_ctx == 160  # the worker is sized by the template
    # each step's count: the run's --requests, at least 4 per stream
    step = sweep.with_requests(50).step(32)
    assert (step.concurrency, step.requests, step.name) == (32, 128, "c32:in128:out32:n128")
    assert sweep.with_requests(50).step(2).requests == 50
    cap = parse_workload("capacity:in16:out4:n30:rate:p90")
    assert (cap.by, cap.percentile, cap.confidence, cap.repeats) == ("rate", 90.0, 0.95, 2)
    step = cap.step(2.5, min_requests=29)
    assert (step.rate, step.concurrency, step.requests) == (2.5, None, 30)  # nN as written
    turns = parse_workload("c2:in16:out4:turns3")
    assert turns.turns == 3 and turns.load_doc()["turns"] == 3


@pytest.mark.parametrize("text", ["sweep:c4:in8:out8", "sweep:in8:out8:dur10s", "capacity:in8:out8:p100",
                                  "capacity:in8:out8:conf40", "sweep:in8:out8:p99", "sweep:in8",
                                  "c2:in8:out8:turns0"])
def test_bad_search_syntax_is_a_clear_error(text: str) -> None:
    with pytest.raises(TokbenchError, match="workload") as err:
        parse_workload(text)
    assert "\n" not in str(err.value)


def test_only_searched_loads_are_searches() -> None:
    """The runner pre-adds every case that is not a search: token and serving loads say so."""
    assert [parse_workload(w).search for w in ("pp512", "tg128@d4096", "c4:in32:out8",
                                                "sweep:in32:out8", "capacity:in32:out8")] == [
        False, False, False, True, True]
