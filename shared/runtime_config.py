"""Runtime configuration that every replica must see, kept in NATS JetStream key-value buckets.

A bucket is created on first use and seeded from the configuration files.
`seed_key` writes a key only while it is absent, with `kv.create`. So two
replicas that start at once write it once, and neither overwrites a value set
later. `KeyWatch` delivers each key's current value at start and then every
change within milliseconds, so a change needs no restart. A value that does not
parse is logged and skipped: the previous good value stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A watch reads every key's current value before `KeyWatch.start` returns, so
# a service serves only with its full configuration. The limit only stops a
# hung server from hanging the start.
INITIAL_LOAD_TIMEOUT_S = 10.0

# Parses a key's raw value; raises ValueError (pydantic's ValidationError is one) when it is invalid.
Parser = Callable[[str, bytes], T]


class RuntimeConfigError(RuntimeError):
    """A bucket could not be opened or created, or its initial values did not arrive in time."""


async def ensure_bucket(js: JetStreamContext, bucket: str, description: str) -> KeyValue:
    """Open `bucket`, creating it with one value per key (no history) when it does not exist.

    Raises `RuntimeConfigError` naming the bucket when JetStream rejects the request.
    """
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        # Two replicas may both get here: creating a bucket with the same
        # configuration again succeeds, so the second create is harmless.
        return await js.create_key_value(KeyValueConfig(bucket=bucket, description=description, history=1))
    except nats.errors.Error as error:
        raise RuntimeConfigError(f"cannot create the JetStream key-value bucket {bucket!r}: {error!r}") from error


async def seed_key(kv: KeyValue, key: str, value: bytes) -> bool:
    """Write `value` under `key` only when the key is absent; return whether this call wrote it.

    A key that was deleted counts as absent (nats-py's `create` writes over the delete marker).
    """
    try:
        await kv.create(key, value)
    except KeyWrongLastSequenceError:
        return False
    return True


async def seed_key_from_file(kv: KeyValue, key: str, path: Path, parse: Parser[object]) -> bool:
    """Seed `key` with the bytes of `path` when the key is absent; return whether this call wrote it.

    The file is parsed first, so an invalid file raises (`OSError` or the
    parser's `ValueError`) instead of seeding a value that every watcher would reject.
    """
    data = path.read_bytes()
    parse(key, data)
    return await seed_key(kv, key, data)


class KeyWatch(Generic[T]):
    """Watches a key, or every key under a prefix such as `keys.>`, and calls back with parsed values.

    `on_update(key, value)` runs for each valid value, `on_delete(key)` for a
    deleted or purged key. A value that `parse` rejects is logged as
    `runtime_config_invalid` with the bucket, key and revision, and no
    callback runs. Callbacks run on the event loop and must not block.
    With `parse_in_thread`, `parse` runs in a worker thread instead, for a
    parser that would stall the event loop, such as one that builds scanners.
    Values are parsed and delivered one at a time in revision order either way.
    With `log_applied`, each valid value is logged as `runtime_config_applied`
    with its revision, so an operator can see which revision a replica uses.

    After NATS reconnects, nats-py's ordered consumer behind the watch
    recreates itself from the revision after the last one it delivered. It
    notices the outage after two missed idle heartbeats, about 10 s.
    """

    def __init__(
        self,
        kv: KeyValue,
        keys: str,
        parse: Parser[T],
        on_update: Callable[[str, T], None],
        on_delete: Callable[[str], None] = lambda _key: None,
        *,
        parse_in_thread: bool = False,
        log_applied: bool = False,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._parse = parse
        self._parse_in_thread = parse_in_thread
        self._log_applied = log_applied
        self._on_update = on_update
        self._on_delete = on_delete
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self, initial_load_timeout_s: float = INITIAL_LOAD_TIMEOUT_S) -> None:
        """Start watching and return once every current value was delivered; raise `RuntimeConfigError` on timeout."""
        self._watcher = await self._kv.watch(self._keys)
        self._task = asyncio.create_task(self._run(self._watcher), name=f"watch-{self._keys}")
        try:
            await asyncio.wait_for(self._loaded.wait(), initial_load_timeout_s)
        except TimeoutError as error:
            await self.stop()
            raise RuntimeConfigError(
                f"the current values of {self._keys!r} did not arrive within {initial_load_timeout_s} s; "
                "check that NATS JetStream is up"
            ) from error

    async def stop(self) -> None:
        """Stop the watch; a connection that is already closed is only logged."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except nats.errors.Error as error:
                log.warning("runtime_config_watch_stop_failed", keys=self._keys, error=repr(error))
            self._watcher = None
        if self._task is not None:
            # Cancelled rather than awaited: when the unsubscribe failed, the
            # watcher never ends its iteration.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        handled = 0
        initial_count: int | None = None
        async for entry in watcher:
            if entry is None:
                initial_count = await self._initial_count(watcher)
            else:
                handled += 1
                await self._apply(entry)
            if initial_count is not None and handled >= initial_count:
                self._loaded.set()

    async def _initial_count(self, watcher: KeyValue.KeyWatcher) -> int:
        # nats-py sends None once, meaning the values that existed when the
        # watch began were delivered. It decides that from the consumer's
        # pending count, which the server may report as 0 while those values
        # are still on their way to this client, so None can come first. The
        # watch waits for as many values as the server reports delivered. nats-py's
        # own `KeyValue.keys` reads the consumer the same way, through `_sub`.
        try:
            info = await watcher._sub.consumer_info()
        except nats.errors.Error as error:
            log.warning("runtime_config_initial_count_failed", keys=self._keys, error=repr(error))
            return 0
        return info.delivered.consumer_seq

    async def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            self._on_delete(entry.key)
            return
        try:
            value = await self._parsed(entry)
        except ValueError as error:
            log.error(
                "runtime_config_invalid",
                bucket=entry.bucket,
                key=entry.key,
                revision=entry.revision,
                error=str(error),
                action="the previous value stays in force; write a valid value to replace it",
            )
            return
        self._on_update(entry.key, value)
        if self._log_applied:
            log.info("runtime_config_applied", bucket=entry.bucket, key=entry.key, revision=entry.revision)

    async def _parsed(self, entry: KeyValue.Entry) -> T:
        if self._parse_in_thread:
            return await asyncio.to_thread(self._parse, entry.key, entry.value or b"")
        return self._parse(entry.key, entry.value or b"")


class WatchedValue(Generic[T]):
    """The current valid value of one key, kept up to date by a `KeyWatch`.

    A new value replaces the old one in a single assignment, so a reader gets
    either the old or the new value, never a mix. A reader that keeps the
    value it read, such as a request in flight, goes on using it after a change.
    Each applied value is logged with its revision.
    """

    def __init__(self, kv: KeyValue, key: str, parse: Parser[T], *, parse_in_thread: bool = False) -> None:
        self._key = key
        self._value: T | None = None
        self._watch = KeyWatch(kv, key, parse, self._set, parse_in_thread=parse_in_thread, log_applied=True)

    @property
    def current(self) -> T:
        """The last valid value; raises `RuntimeConfigError` before `start` or while the key was never valid."""
        if self._value is None:
            raise RuntimeConfigError(f"key {self._key!r} has no valid value; seed it or write a valid one")
        return self._value

    async def start(self) -> None:
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.stop()

    def _set(self, _key: str, value: T) -> None:
        self._value = value
