from datetime import timedelta

import pytest

from prefect_workpool_operator.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200)],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "1.5m", "-5s", "10 s", "5d", "s"])
def test_rejects_what_cel_duration_would_not_take(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_round_trips() -> None:
    for text in ("30s", "10m", "1h30m", "2h5s"):
        assert format_duration(parse_duration(text)) == text
