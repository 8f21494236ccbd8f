"""Real prompts through the whole embedded stack: HTTP in, WebSocket out, every event in ClickHouse."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from services.cli.client import ApiError, SluiceClient
from shared.embedded.stack import EmbeddedStack
from shared.store_client import StoreClient
from tests.e2e.conftest import load_prompt_texts

pytestmark = pytest.mark.stack

# Short outputs keep the suite fast on two cores; the path is the same at any length.
MAX_NEW_TOKENS = 24
# Telemetry commits a batch within about a second; this bounds the wait for rows.
CLICKHOUSE_WAIT_S = 60.0
CONCURRENCY = 4
# The injection classifier's name in the shipped policy, and how many of the
# 30 benign prompts it may block: it scores 2 of them above its 0.7 threshold.
INJECTION_CLASSIFIER = "InjectionClassifier"
MAX_CLASSIFIER_FALSE_POSITIVES = 3

COMPLETED_EVENTS = Counter(
    {
        "request.accepted": 1,
        "request.screened": 1,
        "request.assigned": 1,
        "generation.first_token": 1,
        "generation.completed": 1,
        "output.moderated": 1,
        "output.delivered": 1,
    }
)
# The shipped experiment takes every request, and a request without a
# user_id is its own unit, so each completed request also has one exposure.
EXPOSED_COMPLETED_EVENTS = COMPLETED_EVENTS + Counter({"experiment.exposed": 1})
PROMPT_BLOCKED_EVENTS = Counter({"request.accepted": 1, "request.screened": 1})

FAKE_AWS_KEY_PROMPT = "Deploy with these credentials: aws_access_key_id = AKIAIOSFODNN7EXAMPLE and secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
INVISIBLE_TEXT_PROMPT = "Summarise this review\u200b\u200b: great\U000e0041\U000e0042 product"


@dataclass
class Run:
    """One request followed to its end, as a client sees it."""

    request_id: str
    stream_url: str
    streamed_text: str = ""
    chunks: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


async def run_prompt(client: SluiceClient, body: dict[str, Any], idempotency_key: str | None = None) -> Run:
    submission = await client.submit(body, idempotency_key=idempotency_key)
    run = Run(submission.request_id, submission.stream_url)
    async for message in client.stream(submission.stream_url):
        if message["type"] == "chunk":
            run.chunks.append(message)
        else:
            run.final = message
    run.streamed_text = "".join(chunk["text"] for chunk in run.chunks)
    run.status = await client.status(submission.request_id)
    return run


async def run_prompts(client: SluiceClient, prompts: list[str]) -> list[Run]:
    limiter = asyncio.Semaphore(CONCURRENCY)

    async def one(prompt: str) -> Run:
        async with limiter:
            return await run_prompt(client, {"prompt": prompt, "params": {"max_new_tokens": MAX_NEW_TOKENS}})

    return list(await asyncio.gather(*(one(prompt) for prompt in prompts)))


async def stored_event_counts(
    store: StoreClient, tenant: str, request_ids: list[str], required_types: set[str]
) -> dict[str, Counter]:
    """Wait until ClickHouse has every type in `required_types` for each request, then count events by type."""
    sql = (
        "SELECT request_id, type, count() AS copies FROM events FINAL "
        "WHERE tenant = {tenant:String} AND request_id IN {ids:Array(String)} GROUP BY request_id, type"
    )
    deadline = time.monotonic() + CLICKHOUSE_WAIT_S
    while True:
        counts: dict[str, Counter] = {request_id: Counter() for request_id in request_ids}
        for request_id, event_type, copies in await store.query_all(sql, {"tenant": tenant, "ids": request_ids}):
            counts[request_id][event_type] += copies
        if all(required_types <= set(counter) for counter in counts.values()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def benign_runs(stack: EmbeddedStack) -> list[Run]:
    prompts = load_prompt_texts("mt_bench.jsonl", 15) + load_prompt_texts("self_instruct_user.jsonl", 15)
    async with SluiceClient(stack.http_url, stack.api_key) as client:
        return await run_prompts(client, prompts)


@pytest.fixture(scope="module")
async def attack_runs(stack: EmbeddedStack) -> list[Run]:
    prompts = load_prompt_texts("deepset_attacks.jsonl", 20) + load_prompt_texts("giskard.jsonl", 10)
    async with SluiceClient(stack.http_url, stack.api_key) as client:
        return await run_prompts(client, prompts)


@pytest.fixture
async def store(nats_connection) -> StoreClient:
    return StoreClient(nats_connection)


def classifier_false_positive(run: Run) -> bool:
    return run.status["status"] == "blocked" and run.status.get("blocked_by") == INJECTION_CLASSIFIER


@pytest.fixture(scope="module")
def completed_runs(benign_runs: list[Run]) -> list[Run]:
    """The benign runs that the injection classifier did not block, which must all complete."""
    return [run for run in benign_runs if not classifier_false_positive(run)]


async def test_benign_prompts_complete(benign_runs: list[Run], completed_runs: list[Run]) -> None:
    assert len(benign_runs) == 30
    # The shipped classifier blocks a few role-play and rewriting requests; nothing else may stop a benign prompt.
    assert len(benign_runs) - len(completed_runs) <= MAX_CLASSIFIER_FALSE_POSITIVES
    for run in completed_runs:
        assert run.status["status"] == "completed", run.status
        assert run.final["status"] == "completed"
        assert run.streamed_text.strip(), f"request {run.request_id} completed with empty text"


async def test_streamed_text_equals_stored_text(completed_runs: list[Run]) -> None:
    for run in completed_runs:
        assert run.streamed_text == run.status["text"]


async def test_chunk_sequence_has_no_gaps(completed_runs: list[Run]) -> None:
    for run in completed_runs:
        assert [chunk["seq"] for chunk in run.chunks] == list(range(len(run.chunks)))


async def test_clickhouse_holds_each_event_once(completed_runs: list[Run], store: StoreClient) -> None:
    request_ids = [run.request_id for run in completed_runs]
    counts = await stored_event_counts(store, "dev", request_ids, set(EXPOSED_COMPLETED_EVENTS))
    for request_id in request_ids:
        assert counts[request_id] == EXPOSED_COMPLETED_EVENTS, request_id


async def test_clickhouse_text_equals_streamed_text(completed_runs: list[Run], store: StoreClient) -> None:
    await stored_event_counts(store, "dev", [completed_runs[0].request_id], set(COMPLETED_EVENTS))
    sql = (
        "SELECT JSONExtractString(payload, 'text') FROM events FINAL WHERE tenant = {tenant:String} "
        "AND request_id = {id:String} AND type = 'output.delivered'"
    )
    rows = await store.query_all(sql, {"tenant": "dev", "id": completed_runs[0].request_id})
    assert rows == [[completed_runs[0].streamed_text]]


async def test_attack_verdicts_recorded(attack_runs: list[Run], store: StoreClient) -> None:
    for run in attack_runs:
        assert run.status["verdicts"]["input"], run.status
        assert run.status["status"] in ("completed", "blocked", "failed"), run.status
        if run.status["status"] == "failed":
            # Some jailbreaks are longer than the embedded model's context.
            assert run.status["error"]["code"] == "backend_rejected", run.status
    request_ids = [run.request_id for run in attack_runs]
    counts = await stored_event_counts(store, "dev", request_ids, {"request.screened"})
    for request_id in request_ids:
        assert counts[request_id]["request.screened"] == 1, request_id


@pytest.mark.parametrize(
    ("prompt", "scanner"),
    [(FAKE_AWS_KEY_PROMPT, "Secrets"), (INVISIBLE_TEXT_PROMPT, "InvisibleText")],
    ids=["aws-key", "invisible-text"],
)
async def test_unsafe_prompt_blocked_without_tokens(client: SluiceClient, store: StoreClient, prompt: str, scanner: str) -> None:
    run = await run_prompt(client, {"prompt": prompt})

    assert run.chunks == []
    assert run.final["status"] == "blocked"
    assert run.final["blocked_by"] == scanner
    assert run.status["status"] == "blocked"
    counts = await stored_event_counts(store, "dev", [run.request_id], set(PROMPT_BLOCKED_EVENTS))
    assert counts[run.request_id] == PROMPT_BLOCKED_EVENTS


async def test_same_user_gets_same_variant(client: SluiceClient) -> None:
    body = {"prompt": "Speak of the moon.", "user_id": "user-42", "params": {"max_new_tokens": 4}}
    runs = [await run_prompt(client, body) for _ in range(4)]
    variants = {run.status["variant"]["variant_key"] for run in runs}
    assert len(variants) == 1


async def test_idempotency_key_repeat_creates_nothing(client: SluiceClient, store: StoreClient) -> None:
    body = {"prompt": "Tell me of kings.", "params": {"max_new_tokens": 4}}
    first = await run_prompt(client, body, idempotency_key="e2e-idempotency-1")
    repeat = await client.submit(body, idempotency_key="e2e-idempotency-1")

    assert repeat.request_id == first.request_id
    counts = await stored_event_counts(store, "dev", [first.request_id], set(COMPLETED_EVENTS))
    assert counts[first.request_id]["request.accepted"] == 1


async def test_reconnect_with_offset_resumes(client: SluiceClient, completed_runs: list[Run]) -> None:
    run = next(run for run in completed_runs if len(run.chunks) >= 2)
    resumed = [message async for message in client.stream(run.stream_url, offset=1)]

    assert [message.get("seq") for message in resumed[:-1]] == [chunk["seq"] for chunk in run.chunks[1:]]
    assert resumed[-1]["type"] == "final"


async def test_missing_key_is_unauthorized(stack: EmbeddedStack) -> None:
    async with httpx.AsyncClient(base_url=stack.http_url) as http:
        response = await http.post("/v1/requests", json={"prompt": "hi"})
    assert response.status_code == 401


async def test_invalid_field_is_named(stack: EmbeddedStack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
        response = await http.post("/v1/requests", json={"prompt": "hi", "params": {"temperature": 7}})
    assert response.status_code == 422
    assert "temperature" in response.text


async def test_oversized_prompt_is_rejected(stack: EmbeddedStack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    prompt = "x" * (stack.settings.max_prompt_chars + 1)
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
        response = await http.post("/v1/requests", json={"prompt": prompt})
    assert response.status_code == 413
    assert str(stack.settings.max_prompt_chars) in response.text.replace(",", "")


async def test_unknown_request_is_not_found(client: SluiceClient) -> None:
    with pytest.raises(ApiError) as raised:
        await client.status("0" * 32)
    assert raised.value.status_code == 404
