"""Tuning of the telemetry service, from `SLUICE_TELEMETRY_*` environment variables.

Connection URLs and the ClickHouse DSN come from `shared.settings.Settings`;
only what is specific to telemetry lives here.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.subjects import TELEMETRY_CONSUMER

# Each insert creates one part in ClickHouse, so larger batches leave fewer
# parts to merge, and each batch costs a pull request and an insert call.
# With events of about 1.2 KB, batches of 10,000 took 21 µs of CPU per event
# and batches of 500 took 59 µs (load_tests/bench_telemetry.py, two cores).
# Two batches fit within the consumer's max_ack_pending of 20,000.
DEFAULT_BATCH_SIZE = 10_000
# Bounds a batch's memory: accepted events carry prompts of up to 32,000
# characters, so 10,000 of them would be about 330 MB. 32 MiB fits about
# 25,000 events of the usual 1.2 KB, and exceeds NATS's default max_payload
# of 1 MiB as the fetch requires.
DEFAULT_BATCH_MAX_BYTES = 32 * 1024 * 1024
# The service stores a partial batch after waiting this long for it to fill,
# so under light traffic reports lag the bus by about a second.
DEFAULT_FETCH_TIMEOUT_S = 1.0
# After a failed insert JetStream redelivers the batch after this delay,
# doubled on each further delivery up to the maximum: a restarting ClickHouse
# gets time to come back and is not hammered meanwhile.
DEFAULT_RETRY_DELAY_INITIAL_S = 1.0
DEFAULT_RETRY_DELAY_MAX_S = 60.0
# ClickHouse stops a store API query after this many seconds, below the
# store client's 30 s reply timeout, so the caller gets an error reply.
DEFAULT_QUERY_MAX_EXECUTION_TIME_S = 20
# An analytics query (an API user's SQL) whose result has more rows than this
# is rejected, because a result that large belongs in an export, not in one
# JSON reply. 10,000 rows of a few short columns make a few hundred
# kilobytes. The reader session is readonly=1, which rejects the
# `max_result_rows` setting, so the store applies the cap as a LIMIT.
DEFAULT_ANALYTICS_MAX_RESULT_ROWS = 10_000
# Off by default: every replica, the embedded stack and each test process
# would otherwise contend for one fixed port on the host. Set a port, such
# as 9464 (the OpenTelemetry Prometheus exporter's default), to serve
# `/metrics`.
DEFAULT_METRICS_PORT = 0
# The consumer lag gauge reads the consumer's state at this interval, one
# JetStream API request each time. Five seconds keeps the value fresher than
# Prometheus's default scrape interval of 15 s.
DEFAULT_LAG_REFRESH_INTERVAL_S = 5.0
# Off by default: each request.accepted event then costs an encoder pass
# (all-MiniLM-L6-v2, unquantized): about 10 ms of CPU for a 20-word prompt,
# 85 ms for 200 words and 450 ms for 1,000 words (torch 2.13, two cores).
# That bounds the writer at roughly 10 to 100 requests per second per core.
# Turn it on for embedding drift and prompt centroids.
DEFAULT_EMBED_PROMPTS = False


class TelemetrySettings(BaseSettings):
    """Batching, retry, query and metrics settings of one telemetry process.

    Every field reads the environment variable `SLUICE_TELEMETRY_<FIELD NAME>`.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_TELEMETRY_", extra="ignore")

    # JetStream hands out at most `max_ack_pending` unacked messages, so a
    # larger batch could never fill.
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=TELEMETRY_CONSUMER.max_ack_pending)
    batch_max_bytes: int = Field(default=DEFAULT_BATCH_MAX_BYTES, ge=1)
    fetch_timeout_s: float = Field(default=DEFAULT_FETCH_TIMEOUT_S, gt=0)
    retry_delay_initial_s: float = Field(default=DEFAULT_RETRY_DELAY_INITIAL_S, gt=0)
    retry_delay_max_s: float = Field(default=DEFAULT_RETRY_DELAY_MAX_S, gt=0)
    query_max_execution_time_s: int = Field(default=DEFAULT_QUERY_MAX_EXECUTION_TIME_S, ge=1)
    analytics_max_result_rows: int = Field(default=DEFAULT_ANALYTICS_MAX_RESULT_ROWS, ge=1)
    # The HTTP port of `/metrics` on `Settings.host`, or 0 to turn the endpoint off.
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    lag_refresh_interval_s: float = Field(default=DEFAULT_LAG_REFRESH_INTERVAL_S, gt=0)
    # Whether request.accepted signal rows get the prompt's embedding in `prompt_embedding`.
    embed_prompts: bool = DEFAULT_EMBED_PROMPTS

    @model_validator(mode="after")
    def _check_retry_delays(self) -> TelemetrySettings:
        if self.retry_delay_max_s < self.retry_delay_initial_s:
            raise ValueError(
                f"retry_delay_max_s ({self.retry_delay_max_s}) is below retry_delay_initial_s "
                f"({self.retry_delay_initial_s}); set SLUICE_TELEMETRY_RETRY_DELAY_MAX_S to at least the initial delay"
            )
        return self
