"""The variant assignment of recent requests, so that signal rows after `request.assigned` carry the variant and model.

Only `request.assigned` names the experiment, variant and model. The later
events of the request (completed, moderated, delivered, failed, cancelled,
expired) name the variant key at most, and never the model. The writer
remembers each assignment it stores and copies it onto those rows, so
per-variant rollups and drift queries need no join. It looks up in
ClickHouse the assignments it does not remember, such as those stored
before a restart or by another replica.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from shared.events import EventType

# A key is (tenant, request id): request ids are unique per tenant only.
RequestKey = tuple[str, str]

# The signal row types that come after request.assigned whenever they come at all.
_AFTER_ASSIGNMENT_TYPES = frozenset(
    event_type.value for event_type in (EventType.COMPLETED, EventType.MODERATED, EventType.DELIVERED)
)
# The signal row types that can end a request at any stage. Their `stage`
# decides whether they follow assignment.
_ENDING_TYPES = frozenset(event_type.value for event_type in (EventType.FAILED, EventType.CANCELLED, EventType.EXPIRED))
# The stages that end a request before it is assigned: screening, and the
# assignment stage itself, which checks the deadline before it assigns.
# These are the `STAGE` names in services/safety and services/assignment.
# The ingress cancels before generation, which may be before or after
# assignment, so its rows count as following assignment.
STAGES_BEFORE_ASSIGNMENT = frozenset({"safety", "assignment"})


def follows_assignment(event_type: str, stage: str) -> bool:
    """Return whether a signal row of `event_type` and `stage` ('' for none) may follow its request's assignment."""
    if event_type in _AFTER_ASSIGNMENT_TYPES:
        return True
    return event_type in _ENDING_TYPES and stage not in STAGES_BEFORE_ASSIGNMENT


class Assignment(NamedTuple):
    """The experiment (or ''), variant key, model name (or '') and backend of one request."""

    experiment: str
    variant: str
    model: str
    backend: str


class RecentAssignments:
    """The assignments of the last `max_requests` requests added, oldest dropped first. Not thread-safe."""

    def __init__(self, max_requests: int) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests is {max_requests}; it must be at least 1")
        self._max_requests = max_requests
        self._assignments: OrderedDict[RequestKey, Assignment] = OrderedDict()

    def __len__(self) -> int:
        return len(self._assignments)

    def get(self, key: RequestKey) -> Assignment | None:
        """Return the assignment of the request, or None when it was never added or was dropped."""
        return self._assignments.get(key)

    def add(self, key: RequestKey, assignment: Assignment) -> None:
        """Add or replace the request's assignment, then drop the oldest beyond `max_requests`."""
        self._assignments[key] = assignment
        self._assignments.move_to_end(key)
        if len(self._assignments) > self._max_requests:
            self._assignments.popitem(last=False)
