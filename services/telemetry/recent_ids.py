"""The event ids that one telemetry process inserted last, so that a copy is skipped without asking ClickHouse."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

# A key is (tenant, event id): event ids derive from the tenant, and the
# ClickHouse lookup is scoped by tenant the same way.
EventKey = tuple[str, str]


class RecentIds:
    """A set of the last `max_ids` keys added, oldest dropped first. Not thread-safe."""

    def __init__(self, max_ids: int) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids is {max_ids}; it must be at least 1")
        self._max_ids = max_ids
        self._keys: set[EventKey] = set()
        self._order: deque[EventKey] = deque()

    def __contains__(self, key: EventKey) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add_all(self, keys: Iterable[EventKey]) -> None:
        """Add `keys` that are not present yet, then drop the oldest keys beyond `max_ids`."""
        for key in keys:
            if key not in self._keys:
                self._keys.add(key)
                self._order.append(key)
        while len(self._order) > self._max_ids:
            self._keys.discard(self._order.popleft())
