"""The drift service's schedule: read new samples, compare ready windows with their references, and send the results.

Each tenant's traffic is compared with its own reference, with a
`DriftWindows` and a `Detector` per tenant, because tenants send different
traffic and every report is read per tenant. Within a tenant the
comparisons are per model variant and signal, as the core does them.

The reference of a (tenant, variant, signal) is the first
`reference_min_samples` samples that the store holds for it. Because it is
read from the store, a restarted runner freezes the same reference again.
After the reference, each evaluation reads the samples stored since the
previous read and adds them to the open window, which closes once it
contains `window_min_samples`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from services.drift.config import DriftSettings
from services.drift.detector import Detector, DriftReport, Outcome
from services.drift.metrics import DriftMetrics
from services.drift.publishing import ResultPublisher, alert_message, result_envelopes
from services.drift.source import SOURCED_SIGNALS, SignalSource
from services.drift.windows import DriftWindows
from shared.consuming import BUS_ERRORS
from shared.drift_signals import Signal
from shared.events import utc_now
from shared.store_client import StoreError

log = structlog.get_logger(__name__)

# The scheduled evaluation reads events up to this long before it starts.
# Telemetry stores an event about a second after it is published, and a
# request's variant is published milliseconds after its prompt is screened.
# NOTE: an event stored more than this long after its own timestamp (a
# telemetry outage, a clock far behind) falls before the read position and is
# never counted.
SETTLE_DELAY = timedelta(seconds=30)


@dataclass
class _TenantState:
    windows: DriftWindows
    detector: Detector
    variants: set[str] = field(default_factory=set)
    # Per (variant, signal) with a frozen reference: the end of the time range read last.
    read_until: dict[tuple[str, Signal], datetime] = field(default_factory=dict)


class DriftRunner:
    """Runs evaluations on the schedule of `settings.schedule_interval_s`.

    Not thread-safe: one task calls `evaluate` or `run`.
    """

    def __init__(
        self,
        source: SignalSource,
        publisher: ResultPublisher,
        metrics: DriftMetrics,
        settings: DriftSettings,
        *,
        signals: tuple[Signal, ...] = SOURCED_SIGNALS,
    ) -> None:
        self._source = source
        self._publisher = publisher
        self._metrics = metrics
        self._settings = settings
        self._signals = signals
        self._tenants: dict[str, _TenantState] = {}
        # The end of the last time range searched for variants, or None before the first search.
        self._variants_found_until: datetime | None = None

    async def run(self) -> None:
        """Evaluate every `schedule_interval_s` seconds until cancelled.

        An evaluation that fails is logged, and the next one runs on time.
        """
        interval_s = self._settings.schedule_interval_s
        while True:
            started = time.monotonic()
            try:
                await self.evaluate(utc_now() - SETTLE_DELAY)
            except StoreError as error:
                log.warning("drift_evaluation_failed", error=str(error), retry_in_s=interval_s)
            await asyncio.sleep(max(interval_s - (time.monotonic() - started), 0.0))

    async def evaluate(self, until: datetime) -> dict[str, DriftReport]:
        """Run one evaluation over the events stored with times up to `until`, and return each tenant's report.

        Raises `StoreError` when the search for new variants fails. A failed
        read of one signal is logged, and that signal is read again, from
        the same position, on the next evaluation.
        """
        await self._find_variants(until)
        reports = {}
        for tenant in sorted(self._tenants):
            state = self._tenants[tenant]
            await self._read_new_samples(tenant, state, until)
            report = state.detector.evaluate(state.windows.take_ready())
            await self._send(tenant, state, report)
            reports[tenant] = report
        return reports

    async def _find_variants(self, until: datetime) -> None:
        found = await self._source.variants(self._variants_found_until, until)
        for tenant, variant in found:
            self._tenant_state(tenant).variants.add(variant)
        self._variants_found_until = until

    def _tenant_state(self, tenant: str) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            windows = DriftWindows(
                reference_min_samples=self._settings.reference_min_samples,
                window_min_samples=self._settings.window_min_samples,
            )
            state = self._tenants[tenant] = _TenantState(windows, Detector(self._settings))
        return state

    async def _read_new_samples(self, tenant: str, state: _TenantState, until: datetime) -> None:
        for variant in sorted(state.variants):
            for signal in self._signals:
                try:
                    await self._read_signal(tenant, state, variant, signal, until)
                except (StoreError, ValueError) as error:
                    log.warning("drift_read_failed", tenant=tenant, variant=variant, signal=str(signal), error=str(error))

    async def _read_signal(self, tenant: str, state: _TenantState, variant: str, signal: Signal, until: datetime) -> None:
        key = (variant, signal)
        start = state.read_until.get(key)
        if start is None:
            start = await self._freeze_reference(tenant, state, variant, signal, until)
            if start is None:
                return
        if until <= start:
            return

        values = await self._source.sample(tenant, variant, signal, start, until)
        state.windows.add(variant, signal, values, start=start, end=until)
        state.read_until[key] = until

    async def _freeze_reference(
        self, tenant: str, state: _TenantState, variant: str, signal: Signal, until: datetime
    ) -> datetime | None:
        """Freeze the reference once the store contains enough samples, and return where the first current window starts."""
        reference = await self._source.reference(
            tenant, variant, signal, sample_count=self._settings.reference_min_samples, end=until
        )
        if reference is None:
            return None
        state.windows.freeze_reference(variant, reference)
        state.read_until[(variant, signal)] = reference.end
        log.info(
            "drift_reference_frozen",
            tenant=tenant,
            variant=variant,
            signal=str(signal),
            samples=reference.sample_count,
            start=reference.start.isoformat(),
            end=reference.end.isoformat(),
        )
        return reference.end

    async def _send(self, tenant: str, state: _TenantState, report: DriftReport) -> None:
        firing = {
            (result.variant, str(result.signal)): state.detector.is_firing(result.variant, result.signal)
            for result in report.results
        }
        self._metrics.record(tenant, report, firing)
        evaluation_id = uuid.uuid4().hex
        evaluated_at = utc_now()
        fired = sum(1 for result in report.results if result.outcome is Outcome.FIRED)
        log.info(
            "drift_evaluated",
            tenant=tenant,
            evaluation_id=evaluation_id,
            compared=len(report.results),
            fired=fired,
            alerts=len(report.alerts),
            per_test_alpha=report.per_test_alpha,
        )
        await self._publish_results(tenant, evaluation_id, evaluated_at, report, firing)
        await self._publish_alerts(tenant, evaluation_id, evaluated_at, report)

    async def _publish_results(
        self,
        tenant: str,
        evaluation_id: str,
        evaluated_at: datetime,
        report: DriftReport,
        firing: dict[tuple[str, str], bool],
    ) -> None:
        envelopes = result_envelopes(tenant, evaluation_id, evaluated_at, report, firing)
        try:
            await self._publisher.publish_results(envelopes)
        except BUS_ERRORS as error:
            # The detector's state has moved on, so these results are lost from drift_reports.
            log.error("drift_results_publish_failed", tenant=tenant, evaluation_id=evaluation_id, error=repr(error))

    async def _publish_alerts(self, tenant: str, evaluation_id: str, evaluated_at: datetime, report: DriftReport) -> None:
        for alert in report.alerts:
            log.warning(
                "drift_alert",
                tenant=tenant,
                evaluation_id=evaluation_id,
                status=str(alert.status),
                variant=alert.variant,
                signal=str(alert.signal),
                statistic=alert.statistic,
                value=alert.value,
                threshold=alert.threshold,
            )
            try:
                await self._publisher.publish_alert(alert_message(tenant, evaluation_id, evaluated_at, alert))
            except BUS_ERRORS as error:
                log.error(
                    "drift_alert_publish_failed",
                    tenant=tenant,
                    evaluation_id=evaluation_id,
                    variant=alert.variant,
                    signal=str(alert.signal),
                    error=repr(error),
                )
