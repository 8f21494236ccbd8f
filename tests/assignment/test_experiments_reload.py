"""A running assignment service follows changes to the experiments in NATS without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from faststream import TestApp
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.assignment.app import make_app
from shared.config_store import EXPERIMENTS_KEY
from shared.events import ChatMessage, EventType, RequestSpec, ScreenedPayload, Verdict
from shared.settings import Settings
from tests.support.config_bucket import put_config, wait_for_revision
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import jetstream_client, private_nats, publish_envelope, wait_for_event

pytestmark = pytest.mark.nats

WAIT_S = 10.0
DEFAULT_ONLY = """\
default_variant:
  key: {key}
  backend: embedded
  params: {{max_new_tokens: 8}}
"""


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own, so that changing the experiments here leaves the package's other service alone."""
    with private_nats(tmp_path_factory, "assignment-reload-nats") as url:
        yield url


@pytest.fixture(scope="module")
async def jetstream(bus_url: str, redis_url: str) -> AsyncIterator[JetStreamContext]:
    async with TestApp(make_app(Settings(nats_url=bus_url, redis_url=redis_url))):
        async with jetstream_client(bus_url) as jetstream:
            yield jetstream


async def assigned_variant(jetstream: JetStreamContext) -> tuple[str | None, str]:
    """Publish a screened request of user alice and return the experiment key and variant key it was assigned."""
    request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")], user_id="alice")
    payload = ScreenedPayload(request=request, verdict=Verdict.PASSED, scanners=[])
    screened = new_request_envelope(EventType.SCREENED, payload, tenant="acme", deadline_in_s=60.0)
    await publish_envelope(jetstream, screened)
    assigned = (await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)).parsed_payload()
    return assigned.experiment_key, assigned.variant.key


async def put_and_wait(jetstream: JetStreamContext, text: str, event: str) -> bool:
    """Store `text` as the experiments and wait until the service logged `event` for that revision."""
    with capture_logs() as logs:
        revision = await put_config(jetstream, EXPERIMENTS_KEY, text)
        return await wait_for_revision(logs, event, EXPERIMENTS_KEY, revision)


async def test_new_experiments_apply_to_next_request(jetstream: JetStreamContext) -> None:
    experiment_before, _variant = await assigned_variant(jetstream)

    applied = await put_and_wait(jetstream, DEFAULT_ONLY.format(key="reloaded"), "runtime_config_applied")

    assert experiment_before == "sampling-temperature"
    assert applied
    assert await assigned_variant(jetstream) == (None, "reloaded")


async def test_invalid_experiments_keep_previous(jetstream: JetStreamContext) -> None:
    await put_and_wait(jetstream, DEFAULT_ONLY.format(key="in-force"), "runtime_config_applied")

    rejected = await put_and_wait(
        jetstream, DEFAULT_ONLY.format(key="broken").replace("embedded", "missing"), "runtime_config_invalid"
    )

    assert rejected
    assert await assigned_variant(jetstream) == (None, "in-force")
