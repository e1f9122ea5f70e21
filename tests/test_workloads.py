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
