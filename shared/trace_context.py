"""W3C Trace Context for requests and bus messages: parse a `traceparent`, start a trace, start a child span.

The header format is fixed by W3C Trace Context Level 1
(https://www.w3.org/TR/trace-context/#traceparent-header):
`VERSION-TRACE_ID-PARENT_ID-FLAGS` in lowercase hex, such as
`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. The trace id is
16 bytes and the parent id 8 bytes, and neither may be all zeros. Parsing and
formatting go through the propagator of `opentelemetry-api` (installed with
FastAPI), so the rules for invalid values, later versions and `tracestate`
are the reference implementation's. The API package has no id generator
(that is in the SDK), so ids come from `random.getrandbits`, as the SDK's
`RandomIdGenerator` does.

Every publish of an envelope is one span (`shared.bus.EventPublisher`). The
envelope's `trace` map then contains the span's headers and its `trace_id`,
`span_id` and `parent_span_id` as separate keys, so telemetry's `trace`
column can be queried as `trace['trace_id']` without parsing the header.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The W3C header names; NATS message headers use the same ones.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The keys of an envelope's `trace` map, besides the two headers.
TRACE_ID = "trace_id"
SPAN_ID = "span_id"
PARENT_SPAN_ID = "parent_span_id"

_PROPAGATOR = TraceContextTextMapPropagator()


def parse_traceparent(carrier: Mapping[str, str]) -> trace.SpanContext | None:
    """Return the span context of `carrier`'s `traceparent` (with its `tracestate`), or None when it is missing or invalid.

    W3C Trace Context requires an invalid `traceparent` to be ignored, and
    the `tracestate` with it.
    """
    context = _PROPAGATOR.extract(carrier)
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def start_trace() -> trace.SpanContext:
    """Return the root span of a new trace, with the sampled flag set (`01`)."""
    return trace.SpanContext(
        trace_id=_random_id(128),
        span_id=_random_id(64),
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


def start_child(parent: trace.SpanContext) -> trace.SpanContext:
    """Return a new span of `parent`'s trace, keeping its flags and `tracestate`."""
    return trace.SpanContext(
        trace_id=parent.trace_id,
        span_id=_random_id(64),
        is_remote=False,
        trace_flags=parent.trace_flags,
        trace_state=parent.trace_state,
    )


def trace_headers(span_context: trace.SpanContext) -> dict[str, str]:
    """Return `traceparent`, and `tracestate` when it is not empty, for `span_context`."""
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers, trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return headers


def request_trace(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """Return the trace headers of an HTTP request: the client's when its `traceparent` is valid, else a new trace's."""
    carrier = {name: value for name, value in ((TRACEPARENT, traceparent), (TRACESTATE, tracestate)) if value}
    span_context = parse_traceparent(carrier) or start_trace()
    return trace_headers(span_context)


def child_trace(parent_trace: Mapping[str, str]) -> dict[str, str]:
    """Return the `trace` map of a new span under `parent_trace`'s `traceparent`, or of a new trace when it has none.

    The map contains the span's headers and its `trace_id`, `span_id` and,
    under a parent, `parent_span_id`, in lowercase hex as in the header.
    """
    parent = parse_traceparent(parent_trace)
    span_context = start_trace() if parent is None else start_child(parent)
    child = trace_headers(span_context)
    child[TRACE_ID] = trace.format_trace_id(span_context.trace_id)
    child[SPAN_ID] = trace.format_span_id(span_context.span_id)
    if parent is not None:
        child[PARENT_SPAN_ID] = trace.format_span_id(parent.span_id)
    return child


def _random_id(bits: int) -> int:
    # All zeros is the one invalid value of either id.
    while True:
        value = random.getrandbits(bits)
        if value:
            return value
