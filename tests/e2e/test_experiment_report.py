"""The experiment report through the whole embedded stack, checked against numbers computed here from the same traffic.

Seeded users send requests into the shipped experiment `sampling-temperature`
(arms control and cooler, 50/50) and feedback through the API, under a
tenant of their own, so that no other test's requests, exposures or sticky
assignments count. The report over the run must match scipy and statsmodels
applied to the per-user arrays of what the test sent.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from services.cli.client import ApiError, SluiceClient
from shared.embedded.stack import EmbeddedStack
from shared.events import FeedbackKind
from shared.store_client import StoreClient
from tests.e2e.experiment_traffic import (
    FeedbackRates,
    SimulatedUser,
    any_positive,
    arm_users,
    draw_feedback,
    feedback_counts,
    feedback_sums,
    plan_users,
    send_feedback,
    send_requests,
)
from tests.e2e.test_pipeline import COMPLETED_EVENTS, CONCURRENCY, stored_event_counts
from tests.support.keys_cli import CreatedKey, create_key

pytestmark = pytest.mark.stack

EXPERIMENT = "sampling-temperature"
CONTROL = "control"
TREATMENT = "cooler"
# The seed fixes the users' names, hence their arms (GrowthBook hashes the
# user id), and every draw. This seed splits the users 105/95, so the SRM
# check has a nonzero statistic to match (p = 0.48) and is far from a mismatch.
SEED = 7
USERS = 200
RATES = {
    CONTROL: FeedbackRates(
        conversion=0.25,
        explicit_non_conversion=0.1,
        revenue_range=(5.0, 50.0),
        thumbs=0.6,
        thumbs_up=0.55,
        rating=0.5,
        rating_weights=(1, 2, 3, 3, 1),
    ),
    TREATMENT: FeedbackRates(
        conversion=0.35,
        explicit_non_conversion=0.1,
        revenue_range=(10.0, 60.0),
        thumbs=0.6,
        thumbs_up=0.7,
        rating=0.5,
        rating_weights=(1, 1, 3, 4, 2),
    ),
}
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# The report and the references here compute the same statistics in another
# order (sums in ClickHouse against numpy arrays), so they agree to rounding.
TOLERANCE = 1e-9
# Telemetry stores a batch about a second after its events; the limit only stops a broken stack from hanging the test.
STORE_WAIT_S = 60.0
KEY_WAIT_S = 5.0


@dataclass(frozen=True)
class ExperimentRun:
    """The simulated users, the tenant, key and start time of their run, what the store held, and the report over the run."""

    tenant: str
    api_key: str
    since: str
    users: list[SimulatedUser]
    stored_exposures: int
    stored_feedback: int
    report: dict[str, Any]


@dataclass(frozen=True)
class MetricReference:
    """A metric computed here: each arm's estimate with its interval, the lift interval and the p-value."""

    control: dict[str, float]
    treatment: dict[str, float]
    absolute_lift: dict[str, float]
    p_value: float


def interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": float(value), "ci_low": float(low), "ci_high": float(high)}


def within_tolerance(expected: Any) -> Any:
    return pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE)


def new_tenant() -> str:
    return f"experiment-e2e-{uuid.uuid4().hex[:8]}"


async def create_tenant_key(stack: EmbeddedStack, tenant: str) -> CreatedKey:
    """Create a key for `tenant` with `sluice keys create`, and wait until the ingress accepts it."""
    key = await asyncio.to_thread(create_key, stack.settings.resolved_nats_url, tenant)
    async with SluiceClient(stack.http_url, key.plain_key) as client:
        deadline = time.monotonic() + KEY_WAIT_S
        while True:
            try:
                await client.status(uuid.uuid4().hex)
            except ApiError as error:
                # 404: the key was accepted and the request id is unknown.
                if error.status_code == 404:
                    return key
                if time.monotonic() > deadline:
                    pytest.fail(f"the ingress still rejects the new key of tenant {tenant} after {KEY_WAIT_S} s: {error}")
            await asyncio.sleep(0.05)


async def stored_count(store: StoreClient, sql: str, parameters: dict[str, Any], expected: int) -> int:
    """Return the count that `sql` selects once it reaches `expected`, or what it is after STORE_WAIT_S."""
    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        [[count]] = await store.query_all(sql, parameters)
        if count >= expected or time.monotonic() > deadline:
            return int(count)
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def store(stack: EmbeddedStack) -> AsyncIterator[StoreClient]:
    connection = await nats.connect(stack.settings.resolved_nats_url)
    yield StoreClient(connection)
    await connection.close()


@pytest.fixture(scope="module")
async def experiment_run(stack: EmbeddedStack, store: StoreClient) -> ExperimentRun:
    """Run the seeded users' requests and feedback under a new tenant, wait until the store has them, and fetch the report."""
    rng = random.Random(SEED)
    tenant = new_tenant()
    key = await create_tenant_key(stack, tenant)
    since = datetime.now(UTC).isoformat()
    users = plan_users(rng, f"seed-{SEED}-user", USERS)

    async with SluiceClient(stack.http_url, key.plain_key) as client:
        await send_requests(client, rng, users, CONCURRENCY)

        # Feedback is accepted only for a request that ClickHouse has stored.
        request_ids = [run.request_id for user in users for run in user.runs]
        await stored_event_counts(store, tenant, request_ids, set(COMPLETED_EVENTS))
        draw_feedback(rng, users, RATES)
        await send_feedback(client, users, CONCURRENCY)

        exposures = await stored_count(
            store,
            "SELECT uniqExact(event_id) FROM exposures WHERE tenant = {tenant:String} AND experiment_key = {experiment:String}",
            {"tenant": tenant, "experiment": EXPERIMENT},
            expected=len(users),
        )
        feedback = await stored_count(
            store,
            "SELECT uniqExact(event_id) FROM feedback WHERE tenant = {tenant:String}",
            {"tenant": tenant},
            expected=sum(len(user.feedback) for user in users),
        )
        report = await client.experiment_report(EXPERIMENT, {"since": since})

    return ExperimentRun(tenant, key.plain_key, since, users, exposures, feedback, report)


def metric_result(report: dict[str, Any], key: str) -> dict[str, Any]:
    return next(result for result in report["metrics"] if result["key"] == key)


def users_by_arm(experiment_run: ExperimentRun) -> tuple[list[SimulatedUser], list[SimulatedUser]]:
    return arm_users(experiment_run.users, CONTROL), arm_users(experiment_run.users, TREATMENT)


def proportion_reference(control: np.ndarray, treatment: np.ndarray) -> MetricReference:
    """Compute rates with the normal interval, the two-proportion z-test (pooled) and the Wald interval of the difference."""
    control_count, control_size = int(control.sum()), len(control)
    treatment_count, treatment_size = int(treatment.sum()), len(treatment)
    control_rate = control_count / control_size
    treatment_rate = treatment_count / treatment_size
    control_interval = proportion_confint(control_count, control_size, alpha=ALPHA, method="normal")
    treatment_interval = proportion_confint(treatment_count, treatment_size, alpha=ALPHA, method="normal")

    _statistic, p_value = proportions_ztest([treatment_count, control_count], [treatment_size, control_size])
    low, high = confint_proportions_2indep(
        treatment_count, treatment_size, control_count, control_size, method="wald", compare="diff", alpha=ALPHA
    )
    return MetricReference(
        control=interval(control_rate, *control_interval),
        treatment=interval(treatment_rate, *treatment_interval),
        absolute_lift=interval(treatment_rate - control_rate, low, high),
        p_value=float(p_value),
    )


def mean_reference(control: np.ndarray, treatment: np.ndarray) -> MetricReference:
    """Compute means with the t interval on n - 1 degrees of freedom, and Welch's t-test with its interval of the difference."""
    result = stats.ttest_ind(treatment, control, equal_var=False)
    difference = result.confidence_interval(CONFIDENCE)
    return MetricReference(
        control=mean_interval(control),
        treatment=mean_interval(treatment),
        absolute_lift=interval(treatment.mean() - control.mean(), difference.low, difference.high),
        p_value=float(result.pvalue),
    )


def mean_interval(values: np.ndarray) -> dict[str, float]:
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return interval(values.mean(), low, high)


def ratio_estimate(numerators: np.ndarray, denominators: np.ndarray) -> tuple[float, float]:
    """Return Σx / Σy over units and its delta-method standard error.

    Var(R) ≈ (σ²_x - 2R·σ_xy + R²·σ²_y) / (n·μ_y²), with sample moments (ddof=1) over the units.
    """
    ratio = numerators.sum() / denominators.sum()
    covariance = np.cov(numerators, denominators, ddof=1)
    variance = (covariance[0, 0] - 2 * ratio * covariance[0, 1] + ratio**2 * covariance[1, 1]) / (
        len(numerators) * denominators.mean() ** 2
    )
    return float(ratio), math.sqrt(variance)


def ratio_reference(control: tuple[np.ndarray, np.ndarray], treatment: tuple[np.ndarray, np.ndarray]) -> MetricReference:
    """Compute ratios with normal intervals from the delta method, and the z-test of their difference."""
    control_ratio, control_error = ratio_estimate(*control)
    treatment_ratio, treatment_error = ratio_estimate(*treatment)
    difference = treatment_ratio - control_ratio
    difference_error = math.hypot(control_error, treatment_error)
    return MetricReference(
        control=normal_interval(control_ratio, control_error),
        treatment=normal_interval(treatment_ratio, treatment_error),
        absolute_lift=normal_interval(difference, difference_error),
        p_value=float(2 * stats.norm.sf(abs(difference / difference_error))),
    )


def normal_interval(value: float, standard_error: float) -> dict[str, float]:
    half_width = stats.norm.isf(ALPHA / 2) * standard_error
    return interval(value, value - half_width, value + half_width)


def assert_metric_matches(result: dict[str, Any], reference: MetricReference) -> None:
    control, treatment = result["arms"]
    assert [control["variant"], treatment["variant"]] == [CONTROL, TREATMENT]
    assert control["estimate"] == within_tolerance(reference.control)
    assert treatment["estimate"] == within_tolerance(reference.treatment)
    assert treatment["absolute_lift"] == within_tolerance(reference.absolute_lift)
    assert treatment["p_value"] == within_tolerance(reference.p_value)


async def test_every_request_completed_in_experiment(experiment_run: ExperimentRun) -> None:
    runs = [run for user in experiment_run.users for run in user.runs]

    assert len(experiment_run.users) == USERS
    for run in runs:
        assert run.status["status"] == "completed", run.status
        assert run.status["variant"]["experiment_key"] == EXPERIMENT, run.status


async def test_user_keeps_one_arm(experiment_run: ExperimentRun) -> None:
    for user in experiment_run.users:
        assert len(user.variants) == 1, user.user_id


async def test_store_has_every_exposure_and_feedback(experiment_run: ExperimentRun) -> None:
    assert experiment_run.stored_exposures == USERS
    assert experiment_run.stored_feedback == sum(len(user.feedback) for user in experiment_run.users)


async def test_arm_units_match_users(experiment_run: ExperimentRun) -> None:
    control, treatment = users_by_arm(experiment_run)
    arms = {arm["variant"]: arm for arm in experiment_run.report["arms"]}

    assert list(arms) == [CONTROL, TREATMENT]
    for variant, users in ((CONTROL, control), (TREATMENT, treatment)):
        assert arms[variant]["units"] == len(users), variant
        assert arms[variant]["exposure_units"] == len(users), variant
        # One exposure per user: a user's requests run one after another within one exposure session.
        assert arms[variant]["exposures"] == len(users), variant
        assert arms[variant]["mixed_units"] == 0, variant


@pytest.mark.parametrize(
    ("metric_key", "kind"),
    [("conversion_rate", FeedbackKind.CONVERSION), ("thumbs_up_rate", FeedbackKind.THUMBS)],
)
async def test_binomial_metric_matches_statsmodels(experiment_run: ExperimentRun, metric_key: str, kind: FeedbackKind) -> None:
    control, treatment = users_by_arm(experiment_run)
    reference = proportion_reference(any_positive(control, kind), any_positive(treatment, kind))

    assert_metric_matches(metric_result(experiment_run.report, metric_key), reference)


async def test_revenue_matches_welch_t_test(experiment_run: ExperimentRun) -> None:
    control, treatment = users_by_arm(experiment_run)
    kind = FeedbackKind.VALUE
    reference = mean_reference(feedback_sums(control, kind), feedback_sums(treatment, kind))

    assert_metric_matches(metric_result(experiment_run.report, "revenue_per_unit"), reference)


async def test_rating_matches_delta_method(experiment_run: ExperimentRun) -> None:
    control, treatment = users_by_arm(experiment_run)
    kind = FeedbackKind.RATING
    reference = ratio_reference(
        (feedback_sums(control, kind), feedback_counts(control, kind)),
        (feedback_sums(treatment, kind), feedback_counts(treatment, kind)),
    )

    assert_metric_matches(metric_result(experiment_run.report, "rating"), reference)


async def test_output_tokens_match_statuses(experiment_run: ExperimentRun) -> None:
    result = metric_result(experiment_run.report, "output_tokens")
    estimates = {arm["variant"]: arm["estimate"]["value"] for arm in result["arms"]}

    for variant, users in zip((CONTROL, TREATMENT), users_by_arm(experiment_run), strict=True):
        runs = [run for user in users for run in user.runs]
        tokens = sum(run.status["usage"]["completion_tokens"] for run in runs)
        assert estimates[variant] == within_tolerance(tokens / len(runs)), variant


async def test_error_rate_zero_in_both_arms(experiment_run: ExperimentRun) -> None:
    result = metric_result(experiment_run.report, "error_rate")

    assert result["guardrail"] is True
    for arm in result["arms"]:
        assert arm["estimate"] == interval(0.0, 0.0, 0.0), arm
    for alert in experiment_run.report["guardrail_alerts"]:
        assert "error_rate" not in alert


async def test_sample_ratio_not_flagged(experiment_run: ExperimentRun) -> None:
    observed = [len(users) for users in users_by_arm(experiment_run)]
    expected = [sum(observed) / 2] * 2
    sample_ratio = experiment_run.report["sample_ratio"]

    assert sample_ratio is not None
    assert sample_ratio["observed_units"] == observed
    assert sample_ratio["expected_units"] == within_tolerance(expected)
    assert sample_ratio["p_value"] == within_tolerance(stats.chisquare(observed, expected).pvalue)
    assert sample_ratio["mismatch"] is False


async def test_verdict_given(experiment_run: ExperimentRun) -> None:
    verdict = experiment_run.report["verdict"]

    assert verdict
    assert not verdict.startswith("no verdict"), verdict
    assert TREATMENT in verdict, verdict


async def test_since_after_run_excludes_units(stack: EmbeddedStack, experiment_run: ExperimentRun) -> None:
    async with SluiceClient(stack.http_url, experiment_run.api_key) as client:
        report = await client.experiment_report(EXPERIMENT, {"since": datetime.now(UTC).isoformat()})

    assert [arm["units"] for arm in report["arms"]] == [0, 0]
    assert [arm["exposures"] for arm in report["arms"]] == [0, 0]


async def test_unknown_experiment_not_found(stack: EmbeddedStack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
        response = await http.get("/v1/reports/experiment/no-such-experiment")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "experiment_not_found"
    assert EXPERIMENT in response.json()["error"]["message"]


async def test_other_tenant_sees_no_units(stack: EmbeddedStack, experiment_run: ExperimentRun) -> None:
    other = await create_tenant_key(stack, new_tenant())
    async with SluiceClient(stack.http_url, other.plain_key) as client:
        report = await client.experiment_report(EXPERIMENT, {"since": experiment_run.since})

    assert [arm["units"] for arm in report["arms"]] == [0, 0]
    assert [arm["exposures"] for arm in report["arms"]] == [0, 0]
    assert report["sample_ratio"] is None


async def test_other_tenant_parameter_forbidden(stack: EmbeddedStack, experiment_run: ExperimentRun) -> None:
    other = await create_tenant_key(stack, new_tenant())
    headers = {"Authorization": f"Bearer {other.plain_key}"}
    async with httpx.AsyncClient(base_url=stack.http_url, headers=headers) as http:
        response = await http.get(f"/v1/reports/experiment/{EXPERIMENT}", params={"tenant": experiment_run.tenant})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_tenant"
