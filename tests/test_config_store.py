"""The configuration bucket on a real nats-server: seeding from files, validation and the watched value."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from structlog.testing import capture_logs

from shared.config_store import (
    CONFIG_BUCKET,
    EXPERIMENTS_KEY,
    POLICY_KEY,
    InvalidConfigValue,
    WatchedConfig,
    experiments_parser,
    open_config_bucket,
    policy_parser,
)
from shared.experiments import ConfigError, ExperimentsFile
from shared.runtime_config import RuntimeConfigError
from shared.settings import Settings
from tests.support.config_bucket import put_config, wait_for_revision
from tests.support.jetstream import private_nats

pytestmark = pytest.mark.nats

EXPERIMENTS_FILE = Settings().experiments_file
DEFAULT_ONLY = """
default_variant:
  key: {key}
  backend: embedded
  params: {{max_new_tokens: 8}}
"""


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server: the services of other tests seed `sluice_config` on the session's server."""
    with private_nats(tmp_path_factory, "config-store-nats") as url:
        yield url


@pytest.fixture
async def jetstream(bus_url: str) -> AsyncIterator[JetStreamContext]:
    """A client on an empty configuration bucket."""
    client = await nats.connect(bus_url)
    jetstream = client.jetstream()
    # nats-py 2.x raises the stream's NotFoundError when the bucket does not exist yet.
    with contextlib.suppress(NotFoundError):
        await jetstream.delete_key_value(CONFIG_BUCKET)
    yield jetstream
    await client.close()


def default_only(key: str) -> str:
    return DEFAULT_ONLY.format(key=key)


def watched_experiments(seed_file: Path = EXPERIMENTS_FILE) -> WatchedConfig[ExperimentsFile]:
    return WatchedConfig(EXPERIMENTS_KEY, seed_file, experiments_parser(Settings()))


async def test_start_seeds_absent_key(jetstream: JetStreamContext) -> None:
    experiments = watched_experiments()

    await experiments.start(jetstream)
    await experiments.stop()

    stored = await (await open_config_bucket(jetstream)).get(EXPERIMENTS_KEY)
    assert stored.value == EXPERIMENTS_FILE.read_bytes()
    assert experiments.current.default_variant.key == "default"


async def test_start_keeps_stored_value(jetstream: JetStreamContext) -> None:
    revision = await put_config(jetstream, EXPERIMENTS_KEY, default_only("stored"))
    experiments = watched_experiments()

    await experiments.start(jetstream)
    await experiments.stop()

    stored = await (await open_config_bucket(jetstream)).get(EXPERIMENTS_KEY)
    assert stored.revision == revision
    assert stored.value == default_only("stored").encode()
    assert experiments.current.default_variant.key == "stored"


async def test_start_rejects_invalid_stored_value(jetstream: JetStreamContext) -> None:
    await put_config(jetstream, EXPERIMENTS_KEY, "default_variant: {key: broken}")
    experiments = watched_experiments()

    with capture_logs() as logs, pytest.raises(RuntimeConfigError, match="no valid value"):
        await experiments.start(jetstream)

    [invalid] = [entry for entry in logs if entry["event"] == "runtime_config_invalid"]
    assert invalid["key"] == EXPERIMENTS_KEY
    assert "default_variant.backend" in invalid["error"]


async def test_start_rejects_invalid_seed_file(jetstream: JetStreamContext, tmp_path: Path) -> None:
    seed_file = tmp_path / "experiments.yaml"
    seed_file.write_text(default_only("x").replace("embedded", "missing"))

    with pytest.raises(ConfigError, match="names backend 'missing'"):
        await watched_experiments(seed_file).start(jetstream)

    with pytest.raises(KeyNotFoundError):
        await (await open_config_bucket(jetstream)).get(EXPERIMENTS_KEY)


async def test_change_applies_without_restart(jetstream: JetStreamContext) -> None:
    experiments = watched_experiments()
    await experiments.start(jetstream)
    try:
        with capture_logs() as logs:
            revision = await put_config(jetstream, EXPERIMENTS_KEY, default_only("changed"))
            applied = await wait_for_revision(logs, "runtime_config_applied", EXPERIMENTS_KEY, revision)
    finally:
        await experiments.stop()

    assert applied
    assert experiments.current.default_variant.key == "changed"


async def test_unknown_backend_keeps_previous(jetstream: JetStreamContext) -> None:
    experiments = watched_experiments()
    await experiments.start(jetstream)
    try:
        with capture_logs() as logs:
            bad = default_only("bad").replace("embedded", "missing")
            revision = await put_config(jetstream, EXPERIMENTS_KEY, bad)
            rejected = await wait_for_revision(logs, "runtime_config_invalid", EXPERIMENTS_KEY, revision)
    finally:
        await experiments.stop()

    assert rejected
    assert experiments.current.default_variant.key == "default"
    [invalid] = [entry for entry in logs if entry["event"] == "runtime_config_invalid"]
    assert invalid["bucket"] == CONFIG_BUCKET
    assert invalid["error"].startswith("sluice_config/experiments: variant 'bad' names backend 'missing'")


def test_policy_parser_names_key_and_field() -> None:
    parse = policy_parser(lambda policy: policy)

    with pytest.raises(InvalidConfigValue) as caught:
        parse(POLICY_KEY, b"input:\n  - type: TokenLimit\n    options: {limit: 0}\n")

    assert "policy file sluice_config/policy is invalid" in str(caught.value)
    assert "input[0].options.limit" in str(caught.value)


def test_policy_parser_returns_built_value() -> None:
    parse = policy_parser(lambda policy: [spec.label for spec in policy.input])

    assert parse(POLICY_KEY, b"input:\n  - type: InvisibleText\n") == ["InvisibleText"]


async def test_concurrent_starts_seed_once(jetstream: JetStreamContext) -> None:
    replicas = [watched_experiments() for _ in range(3)]

    with capture_logs() as logs:
        await asyncio.gather(*(replica.start(jetstream) for replica in replicas))
    for replica in replicas:
        await replica.stop()

    seeded = [entry["seeded_from_file"] for entry in logs if entry["event"] == "runtime_config_loaded"]
    assert sorted(seeded) == [False, False, True]
