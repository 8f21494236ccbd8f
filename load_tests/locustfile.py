"""Locust users that drive Sluice's two client paths against a running stack.

`StreamingUser` posts a prompt to `POST /v1/requests`, then reads the
`stream_url` WebSocket to the final message. `PollingUser` posts a prompt,
then reads the `status_url` until the status is terminal.

Beside Locust's rows for the HTTP calls, each request adds rows of its own:
`TTFT stream` runs from the start of the POST to the first chunk, and
`completion stream` and `completion poll` to the final message or terminal
status. A POST that returns anything but 202 fails its POST row and adds no
other row. A request that ends blocked, failed or expired fails its completion
row. A timeout or broken stream fails the completion row, and the TTFT row too
when no chunk had arrived.

Run it from the repository root, so that `load_tests` and `shared` import;
`load_tests/README.md` has the command.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from load_tests.locust_budget import RequestBudget
from load_tests.locust_outcomes import (
    TERMINAL_STATUSES,
    RequestTimedOut,
    ScenarioFailure,
    StatusReadFailed,
    final_failure,
    status_failure,
)
from load_tests.locust_settings import MAX_REQUESTS_VARIABLE, ScenarioSettings
from load_tests.locust_stream import stream_messages

log = logging.getLogger(__name__)

SETTINGS = ScenarioSettings.from_environment()
BUDGET = RequestBudget(SETTINGS.max_requests)

# Request types and names of the rows this scenario adds to Locust's statistics.
TTFT = "TTFT"
COMPLETION = "completion"
STREAM = "stream"
POLL = "poll"

SUBMIT_PATH = "/v1/requests"
# One statistics row for every request's status URL.
STATUS_ROW_NAME = "/v1/requests/{id}"


class SluiceUser(FastHttpUser):
    """The base of both users: the address, the API key, the request budget and the custom rows."""

    abstract = True
    host = SETTINGS.base_url
    default_headers = {"Authorization": f"Bearer {SETTINGS.api_key}"}
    # A closed loop: each user sends its next request as soon as the last one
    # ended, so `--users` is the number of requests in flight.
    wait_time = constant(0)
    network_timeout = SETTINGS.timeout_s
    connection_timeout = SETTINGS.timeout_s

    def within_budget(self, send_request: Callable[[], None]) -> None:
        """Run one request if the budget allows it, and stop the runner after the budget's last request."""
        if not BUDGET.claim():
            raise StopUser()
        try:
            send_request()
        finally:
            if BUDGET.release():
                log.info("%s=%d requests have ended, so the run stops", MAX_REQUESTS_VARIABLE, BUDGET.finished)
                # From a separate greenlet, because quitting kills every user's greenlet, this one included.
                gevent.spawn(self.environment.runner.quit)

    def submit(self) -> dict[str, Any] | None:
        """POST a random prompt and return the 202 body, or None after Locust recorded the failure."""
        body = {"prompt": random.choice(SETTINGS.prompts), "params": {"max_new_tokens": SETTINGS.max_new_tokens}}
        with self.client.post(SUBMIT_PATH, json=body, catch_response=True) as response:
            if response.status_code == 202:
                return response.json()
            # Status 0 means no response at all, and Locust records the connection error itself.
            if response.status_code:
                response.failure(f"expected HTTP 202, got {response.status_code}")
            return None

    def record(self, request_type: str, name: str, started: float, failure: ScenarioFailure | None = None) -> None:
        """Add one sample from `started` (a `time.perf_counter()` value) until now to a custom row."""
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=failure,
            context={},
        )


class StreamingUser(SluiceUser):
    """A user that submits a prompt, then reads its WebSocket stream to the final message."""

    weight = 3

    @task
    def submit_and_stream(self) -> None:
        self.within_budget(self._submit_and_stream)

    def _submit_and_stream(self) -> None:
        started = time.perf_counter()
        accepted = self.submit()
        if accepted is None:
            return
        first_chunk_seen = False
        try:
            for message in stream_messages(accepted["stream_url"], self.default_headers, started + SETTINGS.timeout_s):
                if message.get("type") == "final":
                    self.record(COMPLETION, STREAM, started, final_failure(message))
                elif not first_chunk_seen:
                    first_chunk_seen = True
                    self.record(TTFT, STREAM, started)
        except ScenarioFailure as failure:
            if not first_chunk_seen:
                self.record(TTFT, STREAM, started, failure)
            self.record(COMPLETION, STREAM, started, failure)


class PollingUser(SluiceUser):
    """A user that submits a prompt, then reads its status URL until the status is terminal."""

    weight = 1

    @task
    def submit_and_poll(self) -> None:
        self.within_budget(self._submit_and_poll)

    def _submit_and_poll(self) -> None:
        started = time.perf_counter()
        accepted = self.submit()
        if accepted is None:
            return
        try:
            status = self._poll_until_terminal(accepted["status_url"], started + SETTINGS.timeout_s)
        except ScenarioFailure as failure:
            self.record(COMPLETION, POLL, started, failure)
            return
        self.record(COMPLETION, POLL, started, status_failure(status))

    def _poll_until_terminal(self, url: str, deadline: float) -> dict[str, Any]:
        """Read the status until it is terminal and return that body. Raises `RequestTimedOut` or `StatusReadFailed`."""
        while True:
            status = self._read_status(url)
            if status.get("status") in TERMINAL_STATUSES:
                return status
            if time.perf_counter() + SETTINGS.poll_interval_s >= deadline:
                raise RequestTimedOut("no terminal status within the timeout")
            gevent.sleep(SETTINGS.poll_interval_s)

    def _read_status(self, url: str) -> dict[str, Any]:
        with self.client.get(url, name=STATUS_ROW_NAME, catch_response=True) as response:
            if response.status_code == 200:
                return response.json()
        if response.status_code:
            raise StatusReadFailed(f"the status read returned HTTP {response.status_code}")
        raise StatusReadFailed("the status read got no response")


@events.test_start.add_listener
def log_scenario(environment: Environment, **_kwargs: Any) -> None:
    log.info(
        "Sluice scenario: host %s, %d prompts, max_new_tokens=%d, timeout_s=%g, poll_interval_s=%g, max_requests=%s",
        environment.host or SETTINGS.base_url,
        len(SETTINGS.prompts),
        SETTINGS.max_new_tokens,
        SETTINGS.timeout_s,
        SETTINGS.poll_interval_s,
        SETTINGS.max_requests or "none",
    )
