"""The held-out injections and jailbreaks through the whole embedded stack: the blocked ones never reach a model."""

from __future__ import annotations

from collections import Counter

import pytest

from services.cli.client import SluiceClient
from shared.scanning.classifier import DEFAULT_MODEL_DIR
from shared.scanning.prompt_data import ATTACK_CLASSES, load_prompts, read_split
from shared.store_client import StoreClient
from tests.e2e.conftest import PROMPTS_DIR
from tests.e2e.test_pipeline import PROMPT_BLOCKED_EVENTS, run_prompts, stored_event_counts

pytestmark = pytest.mark.stack

# Injections and jailbreaks only: the shipped policy only flags harmful requests.
BLOCKED_CLASSES = {"injection", "jailbreak"}
# At its shipped threshold of 0.7 the classifier alone detected 69% of these
# in the held-out evaluation. A broken chain falls far below this share.
MIN_BLOCKED_SHARE = 0.6


@pytest.fixture
async def store(nats_connection) -> StoreClient:
    return StoreClient(nats_connection)


def heldout_attack_texts() -> list[str]:
    if not PROMPTS_DIR.is_dir():
        pytest.skip(f"{PROMPTS_DIR} not found: the labelled prompt files live in ../shared/data/prompts/")
    heldout = read_split(DEFAULT_MODEL_DIR / "heldout-sha256.txt")
    prompts = load_prompts(PROMPTS_DIR)
    assert BLOCKED_CLASSES <= set(ATTACK_CLASSES)
    return [prompt.text for prompt in prompts if prompt.digest in heldout and prompt.target in BLOCKED_CLASSES]


async def test_heldout_attacks_blocked_before_inference(client: SluiceClient, store: StoreClient) -> None:
    runs = await run_prompts(client, heldout_attack_texts())
    blocked = [run for run in runs if run.status["status"] == "blocked"]

    assert len(blocked) >= MIN_BLOCKED_SHARE * len(runs), Counter(run.status.get("blocked_by") for run in runs)
    for run in blocked:
        assert run.chunks == []
        assert run.final["stage"] == "input"
    request_ids = [run.request_id for run in blocked]
    counts = await stored_event_counts(store, "dev", request_ids, set(PROMPT_BLOCKED_EVENTS))
    for request_id in request_ids:
        # Only acceptance and screening: no assignment, no token, no output event.
        assert counts[request_id] == PROMPT_BLOCKED_EVENTS, request_id
