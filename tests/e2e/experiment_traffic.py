"""Seeded users of an A/B experiment: their requests and feedback, sent through the API, and the per-user values they imply.

Each user sends one or two short requests, one after another, so that the
assignment service opens one exposure session per user. Once every user's
arm is known from the request status, feedback is drawn with per-arm
probabilities and sent through `POST /v1/feedback`. The per-user arrays that
the report must match are computed from the feedback sent, not from the
store.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from services.cli.client import SluiceClient
from shared.events import FeedbackKind
from tests.e2e.test_pipeline import Run, run_prompt

T = TypeVar("T")

# Short benign prompts that the shipped scanners let through, because a blocked request never enters the experiment.
PROMPTS = ("Speak of the sea.", "Speak of the moon.", "Tell me of kings.", "Sing of the spring.")
# The range of each request's max_new_tokens. Short outputs keep the run fast, and the path is the same at any length.
MIN_NEW_TOKENS = 2
MAX_NEW_TOKENS = 4
MAX_REQUESTS_PER_USER = 2


@dataclass(frozen=True)
class FeedbackRates:
    """One arm's chances of each feedback, per user or per request, and the range of its revenue values."""

    # Per user: the chance of a conversion of 1 plus a value (revenue, drawn from `revenue_range`) on its last request.
    conversion: float
    # Per user that does not convert: the chance of an explicit conversion of 0, which must not count as a conversion.
    explicit_non_conversion: float
    revenue_range: tuple[float, float]
    # Per request: the chance of a thumbs, which is up (1) with chance `thumbs_up`, else down (0).
    thumbs: float
    thumbs_up: float
    # Per request: the chance of a rating of 1 to 5, drawn with these weights.
    rating: float
    rating_weights: tuple[int, int, int, int, int]


@dataclass
class SimulatedUser:
    """One user: the requests it sent, as runs, and the feedback bodies sent on them."""

    user_id: str
    planned_max_new_tokens: list[int]
    runs: list[Run] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variants(self) -> set[str]:
        """The variant keys that served the user's requests: one when sticky bucketing works."""
        return {run.status["variant"]["variant_key"] for run in self.runs}

    @property
    def variant(self) -> str:
        """The user's one variant key. Raises AssertionError when its requests were served by more than one arm."""
        variants = self.variants
        if len(variants) != 1:
            raise AssertionError(f"user {self.user_id} was served by {sorted(variants)}, but sticky bucketing keeps one arm")
        return variants.pop()

    def feedback_values(self, kind: FeedbackKind) -> list[float]:
        return [float(body["value"]) for body in self.feedback if body["kind"] == kind.value]


def plan_users(rng: random.Random, prefix: str, count: int) -> list[SimulatedUser]:
    """Return `count` users named `prefix`-NNN, each with one or two requests of a drawn max_new_tokens."""
    users = []
    for index in range(count):
        requests = rng.randint(1, MAX_REQUESTS_PER_USER)
        tokens = [rng.randint(MIN_NEW_TOKENS, MAX_NEW_TOKENS) for _ in range(requests)]
        users.append(SimulatedUser(f"{prefix}-{index:03d}", tokens))
    return users


async def gather_limited(concurrency: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs, at most `concurrency` at a time, and return their results in job order."""
    limiter = asyncio.Semaphore(concurrency)

    async def limited(job: Callable[[], Awaitable[T]]) -> T:
        async with limiter:
            return await job()

    return list(await asyncio.gather(*(limited(job) for job in jobs)))


async def send_requests(client: SluiceClient, rng: random.Random, users: list[SimulatedUser], concurrency: int) -> None:
    """Run every user's requests to their end, each user's in order, with at most `concurrency` users at a time."""
    prompts = {user.user_id: [rng.choice(PROMPTS) for _ in user.planned_max_new_tokens] for user in users}

    async def run_user(user: SimulatedUser) -> None:
        for prompt, tokens in zip(prompts[user.user_id], user.planned_max_new_tokens, strict=True):
            body = {"prompt": prompt, "user_id": user.user_id, "params": {"max_new_tokens": tokens}}
            user.runs.append(await run_prompt(client, body))

    await gather_limited(concurrency, [lambda user=user: run_user(user) for user in users])


def draw_feedback(rng: random.Random, users: list[SimulatedUser], rates: dict[str, FeedbackRates]) -> None:
    """Fill each user's feedback bodies, drawn with its arm's rates, in user order so the draws repeat for a seed."""
    for user in users:
        arm = rates[user.variant]
        for run in user.runs:
            if rng.random() < arm.thumbs:
                user.feedback.append(_body(run, FeedbackKind.THUMBS, int(rng.random() < arm.thumbs_up)))
            if rng.random() < arm.rating:
                rating = rng.choices(range(1, 6), weights=arm.rating_weights)[0]
                user.feedback.append(_body(run, FeedbackKind.RATING, rating))
        last = user.runs[-1]
        if rng.random() < arm.conversion:
            user.feedback.append(_body(last, FeedbackKind.CONVERSION, 1))
            user.feedback.append(_body(last, FeedbackKind.VALUE, round(rng.uniform(*arm.revenue_range), 2)))
        elif rng.random() < arm.explicit_non_conversion:
            user.feedback.append(_body(last, FeedbackKind.CONVERSION, 0))


def _body(run: Run, kind: FeedbackKind, value: float) -> dict[str, Any]:
    return {"request_id": run.request_id, "kind": kind.value, "value": value}


async def send_feedback(client: SluiceClient, users: list[SimulatedUser], concurrency: int) -> list[dict[str, Any]]:
    """POST every user's feedback and return the API's replies.

    Each idempotency key is the request id and the kind, which is unique because a request gets at most one feedback of each kind.
    """
    bodies = [body for user in users for body in user.feedback]
    return await gather_limited(
        concurrency,
        [lambda body=body: client.feedback(body, f"{body['request_id']}:{body['kind']}") for body in bodies],
    )


def arm_users(users: list[SimulatedUser], variant: str) -> list[SimulatedUser]:
    return [user for user in users if user.variant == variant]


def any_positive(users: list[SimulatedUser], kind: FeedbackKind) -> np.ndarray:
    """Return 1 per user with at least one `kind` feedback above 0, else 0: the binomial metrics' unit values."""
    return np.array([float(any(value > 0 for value in user.feedback_values(kind))) for user in users])


def feedback_sums(users: list[SimulatedUser], kind: FeedbackKind) -> np.ndarray:
    """Return each user's sum of `kind` feedback values, 0 for a user without any: the mean metrics' unit values."""
    return np.array([sum(user.feedback_values(kind)) for user in users])


def feedback_counts(users: list[SimulatedUser], kind: FeedbackKind) -> np.ndarray:
    """Return each user's number of `kind` feedbacks: the denominators of a ratio metric over feedback."""
    return np.array([float(len(user.feedback_values(kind))) for user in users])
