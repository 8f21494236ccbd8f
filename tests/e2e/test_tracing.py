"""W3C trace context through the whole embedded stack: one request's stored events join on one trace id."""

from __future__ import annotations

import httpx
import nats
import pytest

from services.cli.client import SluiceClient
from shared.embedded.stack import EmbeddedStack
from shared.store_client import StoreClient
from tests.e2e.test_pipeline import EXPOSED_COMPLETED_EVENTS, stored_event_counts

pytestmark = pytest.mark.stack

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
TENANT = "dev"

# The event whose publish span is each event's parent, along the pipeline.
# The moderation events are left out: their parent is the span of a CHUNKS
# message, which telemetry does not store.
PARENT_EVENT = {
    "request.screened": "request.accepted",
    "request.assigned": "request.screened",
    "experiment.exposed": "request.screened",
    "generation.first_token": "request.assigned",
    "generation.completed": "request.assigned",
}


async def run_traced_request(stack: EmbeddedStack) -> str:
    """Send one request with TRACEPARENT, stream it to its end and return its request id."""
    headers = {"Authorization": f"Bearer {stack.api_key}", "traceparent": TRACEPARENT}
    body = {"prompt": "Speak of the sea.", "params": {"max_new_tokens": 8}}
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
        response = await http.post("/v1/requests", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    async with SluiceClient(stack.http_url, stack.api_key) as client:
        messages = [message async for message in client.stream(accepted["stream_url"])]
    assert messages[-1]["status"] == "completed", messages[-1]
    return accepted["request_id"]


@pytest.fixture(scope="module")
async def traced_request(stack: EmbeddedStack) -> dict[str, dict[str, str]]:
    """Return each stored event's `trace` map, by event type, of one request sent with TRACEPARENT."""
    request_id = await run_traced_request(stack)
    connection = await nats.connect(stack.settings.resolved_nats_url)
    try:
        store = StoreClient(connection)
        await stored_event_counts(store, TENANT, [request_id], set(EXPOSED_COMPLETED_EVENTS))
        # The query joins on the trace id, as an operator following one trace would.
        sql = (
            "SELECT type, trace FROM events FINAL "
            "WHERE tenant = {tenant:String} AND request_id = {id:String} AND trace['trace_id'] = {trace_id:String}"
        )
        rows = await store.query_all(sql, {"tenant": TENANT, "id": request_id, "trace_id": TRACE_ID})
    finally:
        await connection.close()
    return {event_type: trace for event_type, trace in rows}


async def test_every_event_joins_on_trace_id(traced_request: dict[str, dict[str, str]]) -> None:
    assert set(traced_request) == set(EXPOSED_COMPLETED_EVENTS)


async def test_every_event_has_own_span(traced_request: dict[str, dict[str, str]]) -> None:
    span_ids = [trace["span_id"] for trace in traced_request.values()]
    assert len(set(span_ids)) == len(span_ids)
    for event_type, trace in traced_request.items():
        assert trace["parent_span_id"], event_type
        assert trace["parent_span_id"] != trace["span_id"], event_type
        assert trace["traceparent"] == f"00-{TRACE_ID}-{trace['span_id']}-01", event_type


async def test_accepted_is_child_of_client_span(traced_request: dict[str, dict[str, str]]) -> None:
    assert traced_request["request.accepted"]["parent_span_id"] == CLIENT_SPAN_ID


@pytest.mark.parametrize(("event_type", "parent_type"), sorted(PARENT_EVENT.items()))
async def test_event_is_child_of_previous_stage(
    traced_request: dict[str, dict[str, str]], event_type: str, parent_type: str
) -> None:
    assert traced_request[event_type]["parent_span_id"] == traced_request[parent_type]["span_id"]
