"""W3C `traceparent` parsing, new traces and child spans for envelopes."""

from __future__ import annotations

import re

import pytest

from shared.trace_context import child_trace, parse_traceparent, request_trace

# The example `traceparent` of the W3C Trace Context specification.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HEADER_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

INVALID_TRACEPARENTS = [
    pytest.param("not-a-trace", id="not hex fields"),
    pytest.param(TRACEPARENT.upper(), id="uppercase"),
    pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", id="zero trace id"),
    pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero parent id"),
    pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01", id="version ff"),
    pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01-extra", id="version 00 with more fields"),
    pytest.param(f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", id="short trace id"),
]


def header_fields(traceparent: str) -> tuple[str, str, str]:
    match = HEADER_PATTERN.match(traceparent)
    assert match is not None, traceparent
    return match.group(1), match.group(2), match.group(3)


def test_valid_traceparent_parsed() -> None:
    span_context = parse_traceparent({"traceparent": TRACEPARENT})

    assert span_context is not None
    assert f"{span_context.trace_id:032x}" == TRACE_ID
    assert f"{span_context.span_id:016x}" == PARENT_ID
    assert span_context.trace_flags == 1


@pytest.mark.parametrize("traceparent", INVALID_TRACEPARENTS)
def test_invalid_traceparent_ignored(traceparent: str) -> None:
    assert parse_traceparent({"traceparent": traceparent}) is None


def test_later_version_parsed_by_its_first_fields() -> None:
    # A receiver must read the four known fields of a version it does not know.
    span_context = parse_traceparent({"traceparent": f"01-{TRACE_ID}-{PARENT_ID}-01-future"})

    assert span_context is not None
    assert f"{span_context.trace_id:032x}" == TRACE_ID


def test_request_trace_keeps_client_context() -> None:
    assert request_trace(TRACEPARENT, "vendor=1") == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


def test_request_trace_starts_sampled_trace() -> None:
    headers = request_trace(None, None)

    trace_id, span_id, flags = header_fields(headers["traceparent"])
    assert trace_id != "0" * 32
    assert span_id != "0" * 16
    assert flags == "01"
    assert "tracestate" not in headers


def test_request_trace_replaces_invalid_traceparent() -> None:
    headers = request_trace(TRACEPARENT.upper(), "vendor=1")

    trace_id, _, _ = header_fields(headers["traceparent"])
    assert trace_id != TRACE_ID
    # The tracestate of an invalid traceparent is dropped with it.
    assert "tracestate" not in headers


def test_new_traces_differ() -> None:
    assert request_trace(None, None) != request_trace(None, None)


def test_child_trace_keeps_trace_id() -> None:
    child = child_trace({"traceparent": TRACEPARENT, "tracestate": "vendor=1"})

    trace_id, span_id, flags = header_fields(child["traceparent"])
    assert trace_id == TRACE_ID
    assert span_id != PARENT_ID
    assert flags == "01"
    assert child["trace_id"] == TRACE_ID
    assert child["span_id"] == span_id
    assert child["parent_span_id"] == PARENT_ID
    assert child["tracestate"] == "vendor=1"


def test_child_trace_keeps_unsampled_flag() -> None:
    child = child_trace({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})

    assert header_fields(child["traceparent"])[2] == "00"


def test_child_of_child_chains_span_ids() -> None:
    child = child_trace({"traceparent": TRACEPARENT})

    grandchild = child_trace(child)

    assert grandchild["trace_id"] == TRACE_ID
    assert grandchild["parent_span_id"] == child["span_id"]


def test_child_trace_without_parent_starts_trace() -> None:
    child = child_trace({})

    trace_id, span_id, _ = header_fields(child["traceparent"])
    assert child["trace_id"] == trace_id
    assert child["span_id"] == span_id
    assert "parent_span_id" not in child
