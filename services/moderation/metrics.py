"""The moderation service's Prometheus metrics, in a registry of their own.

    sluice_moderation_check_duration_seconds    histogram by check: one completed scan of an output
    sluice_moderation_verdicts_total            counter by verdict, scanner: outputs blocked while streaming or passed at their end
    sluice_moderation_streams_held              gauge: output streams open in this process, their held-back text in memory

`check` is `holdback` for the scan of the text held back while an output
streams, and `full` for the full output chain when the output ends.
`verdict` is `passed` or `blocked`, and `scanner` is the scanner that blocked
the output, or `none`.
"""

from __future__ import annotations

from collections.abc import Sized

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import DURATION_BUCKETS_S

METRIC_PREFIX = "sluice_moderation"
HOLDBACK_CHECK = "holdback"
FULL_CHECK = "full"
# The scanner label of an output that no scanner blocked.
NO_SCANNER = "none"


class ModerationMetrics:
    """The check histogram, verdict counter and held-streams gauge of one moderation service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check_duration = Histogram(
            f"{METRIC_PREFIX}_check_duration_seconds",
            "Duration of one completed scan of an output: the held-back text while streaming (holdback) "
            "or the whole output at its end (full). A scan whose scanner raised is not counted.",
            ["check"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        # prometheus-client appends `_total` to counter names.
        self.verdicts = Counter(
            f"{METRIC_PREFIX}_verdicts",
            "Outputs moderated to a verdict, by verdict (passed, blocked) and the scanner that blocked them (none when none did).",
            ["verdict", "scanner"],
            registry=self.registry,
        )
        self.streams_held = Gauge(
            f"{METRIC_PREFIX}_streams_held",
            "Output streams open in this process, whose held-back text is in memory.",
            registry=self.registry,
        )

    def watch_streams(self, table: Sized) -> None:
        """Read the number of open streams from `table` at each scrape."""
        self.streams_held.set_function(lambda: len(table))

    def record_verdict(self, blocked_by: str | None) -> None:
        verdict = "passed" if blocked_by is None else "blocked"
        self.verdicts.labels(verdict=verdict, scanner=blocked_by or NO_SCANNER).inc()
