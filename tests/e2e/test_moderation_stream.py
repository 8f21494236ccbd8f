"""Moderation on the live stream, end to end: a banned string produced mid-way never reaches the WebSocket client.

A scripted TGI backend streams an output whose middle chunk contains a
banned phrase of a policy written for this test. The stack runs on its own
free ports with that policy, so the session's shared stack keeps the
shipped one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.client import SluiceClient
from shared.embedded.stack import EmbeddedStack, StackError
from tests.inference.scripted_tgi import ScriptedServer, chunk, stream

pytestmark = pytest.mark.stack

BACKEND_NAME = "scripted"
BANNED_PHRASE = "open sesame now"
POLICY = {"input": [], "output": [{"type": "BanSubstrings", "options": {"substrings": [BANNED_PHRASE]}}]}

# Each piece is one token of the scripted output. The clean opening is far
# longer than the holdback (the phrase's 15 characters), so moderation
# releases part of it before the banned token arrives.
CLEAN_TOKENS = ["The ", "cave ", "was ", "dark ", "and ", "quiet, ", "and ", "the ", "door ", "stayed ", "shut. "]
BANNED_TOKEN = f"Then he said {BANNED_PHRASE}"
TRAILING_TOKENS = [" and ", "the ", "rock ", "rolled ", "aside."]
# Far apart enough that inference publishes each token as its own chunk
# (it merges text that arrives within 20 ms).
TOKEN_DELAY_S = 0.1
USAGE = {"prompt_tokens": 4, "completion_tokens": 17, "total_tokens": 21}
# The status record turns blocked a few milliseconds after the final message,
# when the ingress has projected `output.delivered`.
STATUS_WAIT_S = 10.0


def _scripted_output() -> list[dict[str, object]]:
    tokens = [*CLEAN_TOKENS, BANNED_TOKEN, *TRAILING_TOKENS]
    events = [chunk(token) for token in tokens[:-1]]
    return [*events, chunk(tokens[-1], "length"), chunk(None, usage=USAGE)]


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


def _write_config(folder: Path, backend_url: str) -> dict[str, Path]:
    variant = {"backend": BACKEND_NAME, "model": "scripted", "params": {"max_new_tokens": 32}}
    files = {
        "policy_file": (folder / "policy.yaml", POLICY),
        "backends_file": (folder / "backends.yaml", {"backends": {BACKEND_NAME: {"kind": "tgi", "url": backend_url}}}),
        "experiments_file": (folder / "experiments.yaml", {"default_variant": {"key": "default", **variant}, "experiments": []}),
    }
    for path, content in files.values():
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return {setting: path for setting, (path, _content) in files.items()}


@pytest.fixture(scope="module")
def moderated_stack(tmp_path_factory: pytest.TempPathFactory, backend: ScriptedServer) -> Iterator[EmbeddedStack]:
    config = _write_config(tmp_path_factory.mktemp("moderation-config"), backend.url)
    embedded = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("moderation-stack"), **config)
    try:
        embedded.start()
    except StackError as error:
        pytest.fail(f"the embedded stack with the test policy did not start: {error}")
    yield embedded
    embedded.stop()


async def _status_once_not(client: SluiceClient, request_id: str, status_in_progress: str) -> dict[str, Any]:
    """Return the request's status record once its status is no longer `status_in_progress`, or after `STATUS_WAIT_S`."""
    deadline = time.monotonic() + STATUS_WAIT_S
    status = await client.status(request_id)
    while status["status"] == status_in_progress and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status = await client.status(request_id)
    return status


async def test_banned_chunk_never_reaches_client(moderated_stack: EmbeddedStack, backend: ScriptedServer) -> None:
    backend.reset(stream(_scripted_output(), delay_s=TOKEN_DELAY_S))

    async with SluiceClient(moderated_stack.http_url, moderated_stack.api_key) as client:
        submission = await client.submit({"prompt": "Tell me about the cave."})
        messages = [message async for message in client.stream(submission.stream_url)]
        status = await _status_once_not(client, submission.request_id, "generating")

    received = "".join(message["text"] for message in messages if message["type"] == "chunk")
    final = messages[-1]
    clean_text = "".join(CLEAN_TOKENS)
    assert len(backend.bodies) == 1
    assert received, "the clean opening should be released before the banned token arrives"
    assert clean_text.startswith(received)
    assert BANNED_PHRASE[:3] not in received
    assert final["type"] == "final"
    assert final["status"] == "blocked"
    assert final["stage"] == "output"
    assert final["blocked_by"] == "BanSubstrings"
    assert status["status"] == "blocked"
