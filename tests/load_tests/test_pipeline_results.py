"""The pipeline benchmark's pass check and the rows it reports."""

from __future__ import annotations

from collections import Counter

import pytest

from load_tests.open_loop import LoadResult
from load_tests.pipeline_results import RateMeasurement, cpu_table, latency_rows


def _result(total_s: list[float], errors: Counter[str] | None = None) -> LoadResult:
    result = LoadResult(rate_rps=10.0, duration_s=1.0, sent=len(total_s), completed=len(total_s))
    result.ttft_s = [value / 2 for value in total_s]
    result.total_s = total_s
    result.errors = errors or Counter()
    result.wall_s = 1.0
    return result


def test_added_is_pipeline_minus_direct() -> None:
    measurement = RateMeasurement(10.0, direct=_result([0.002] * 10), pipeline=_result([0.012] * 10))

    assert measurement.added_ms("total_s") == pytest.approx([10.0, 10.0, 10.0])
    assert measurement.added_ms("ttft_s") == pytest.approx([5.0, 5.0, 5.0])


def test_sustained_within_limit() -> None:
    measurement = RateMeasurement(10.0, direct=_result([0.002] * 10), pipeline=_result([0.040] * 10))

    assert measurement.sustained()


def test_sustained_fails_over_limit() -> None:
    measurement = RateMeasurement(10.0, direct=_result([0.002] * 10), pipeline=_result([0.060] * 10))

    assert not measurement.sustained()


def test_sustained_fails_on_errors() -> None:
    pipeline = _result([0.010] * 10, errors=Counter({"http_503": 1}))
    measurement = RateMeasurement(10.0, direct=_result([0.002] * 10), pipeline=pipeline)

    assert not measurement.sustained()


def test_latency_rows_name_errors() -> None:
    pipeline = _result([0.010] * 10, errors=Counter({"timeout": 2, "http_503": 1}))
    rows = latency_rows(RateMeasurement(50.0, direct=_result([0.002] * 10), pipeline=pipeline))

    assert [row[1] for row in rows] == ["direct", "pipeline", "added"]
    assert rows[1][3] == "3 (timeout 2, http_503 1)"
    assert rows[2][5] == "8.0 / 8.0 / 8.0"


def test_cpu_table_sums_six_services() -> None:
    cpu = {"ingress": 1.0, "safety": 2.0, "assignment": 3.0, "inference": 4.0, "moderation": 5.0, "telemetry": 6.0}
    measurement = RateMeasurement(50.0, direct=_result([0.002]), pipeline=_result([0.01]), cpu_ms_per_request=cpu)

    table = cpu_table([measurement])

    assert table.rows[0][table.headers.index("six services")] == "21.00"
    assert table.rows[0][table.headers.index("nats-server")] == "n/a"
