"""The embedded stack, started once per test session on free ports in a temporary data folder."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from services.cli.client import SluiceClient
from shared.embedded.stack import EmbeddedStack, StackError
from shared.settings import REPO_ROOT

PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"


def load_prompt_texts(name: str, count: int) -> list[str]:
    path = PROMPTS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the labelled prompt files live in ../shared/data/prompts/")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line, _ in zip(lines, range(count))]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("stack"))
    try:
        embedded.start()
    except StackError as error:
        pytest.fail(f"the embedded stack did not start: {error}")
    yield embedded
    embedded.stop()


@pytest.fixture
async def client(stack: EmbeddedStack) -> AsyncIterator[SluiceClient]:
    async with SluiceClient(stack.http_url, stack.api_key) as sluice:
        yield sluice


@pytest.fixture
async def nats_connection(stack: EmbeddedStack) -> AsyncIterator[nats.NATS]:
    connection = await nats.connect(stack.settings.resolved_nats_url)
    yield connection
    await connection.close()
