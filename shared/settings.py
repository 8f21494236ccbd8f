"""Settings that every service reads, from `SLUICE_*` environment variables.

The embedded stack (`sluice up`) and a distributed deployment run the same code:
only the URLs below differ. Each default is the embedded stack's value and is
explained where it is set.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# The embedded stack keeps every file it writes here; `.gitignore` lists it.
DEFAULT_DATA_DIR = REPO_ROOT / "data"

# The configuration files that ship with the repository.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "config"

# The small causal LM that the repository builds and commits.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "tinyshakespeare-llama"


class Settings(BaseSettings):
    """Connection URLs, ports, file locations and limits for one process.

    Every field reads the environment variable `SLUICE_<FIELD NAME>`.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR

    # 127.0.0.1 because the embedded stack must not be reachable from other hosts.
    host: str = "127.0.0.1"
    # NATS and Redis keep their usual ports; 8000 and 8080 are the usual HTTP
    # ports of an API and of TGI.
    http_port: int = 8000
    nats_port: int = 4222
    redis_port: int = 6379
    model_server_port: int = 8080

    # Empty means "the embedded server on the port above"; a URL points the
    # same code at a NATS cluster, a Redis server or a ClickHouse server.
    nats_url: str = ""
    redis_url: str = ""
    # `chdb:///PATH` opens ClickHouse in-process; `http://host:8123/db` reaches a server.
    clickhouse_dsn: str = ""
    model_server_url: str = ""

    policy_file: Path = DEFAULT_CONFIG_DIR / "policy.yaml"
    experiments_file: Path = DEFAULT_CONFIG_DIR / "experiments.yaml"
    backends_file: Path = DEFAULT_CONFIG_DIR / "backends.yaml"
    # Empty means `<data_dir>/api-keys.json`, which `sluice up` writes.
    api_keys_file: Path | None = None
    model_dir: Path = DEFAULT_MODEL_DIR
    # None serves the base model alone. A folder serves every peft LoRA
    # adapter in it (one subfolder each, named by its adapter id) over that
    # model, chosen per request.
    model_adapters_dir: Path | None = None
    # Generations the model server runs at once; later requests wait in
    # arrival order. Each runs token by token on the CPU, so more at once only
    # splits the same cores while every KV cache stays in memory.
    model_server_max_concurrent_generations: int = Field(default=4, gt=0)

    # About 8,000 tokens of English; a larger prompt gets HTTP 413.
    max_prompt_chars: int = Field(default=32_000, gt=0)
    # How long a request may take from acceptance to its last token before
    # any stage drops it as expired.
    request_timeout_s: float = Field(default=300.0, gt=0)
    # Request state and released chunks stay readable this long in Redis;
    # ClickHouse keeps the durable record.
    request_state_ttl_s: int = Field(default=24 * 3600, gt=0)
    # The same Idempotency-Key returns the same request id for this long.
    idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)
    # Feedback (POST /v1/feedback, the feedback subject) is accepted on a
    # request accepted at most this long ago. 30 days lets a conversion that
    # a monthly billing run reports still count. Feedback on an older
    # response, likely from a model version since replaced, is rejected.
    feedback_attribution_window_s: int = Field(default=30 * 24 * 3600, gt=0)
    # A feedback idempotency key returns the same feedback id for this long
    # after its feedback was accepted. Clients retry within minutes, so a
    # day is plenty, at an estimated few hundred bytes of Redis per key. A
    # retry after that publishes the same event id again, which queries
    # count once because they keep one row per event id.
    feedback_idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)
    # Each tenant's share of an endpoint pool while several tenants have
    # requests waiting, as JSON: `{"acme": 3}` gives acme 3 admissions for
    # each one of a tenant of weight 1. A tenant not listed has weight 1, so
    # by default waiting tenants take turns equally.
    tenant_weights: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    # A user's stored experiment variants (sticky bucketing) expire after 90
    # days without a request, and every request restarts the period. That
    # outlasts a typical experiment of a few weeks, so a returning user keeps
    # the variant, while the documents of users who left do not pile up.
    assignment_sticky_bucket_ttl_s: int = Field(default=90 * 24 * 3600, gt=0)
    # A unit's exposure to an experiment is published once per session: a
    # later request within 30 minutes publishes none and extends the session.
    # 30 minutes of inactivity is the usual session timeout of web analytics
    # (Google Analytics, Matomo).
    assignment_exposure_session_s: int = Field(default=30 * 60, gt=0)

    # The HTTP port of each bus service's Prometheus `/metrics` on `host`, or
    # 0 to turn it off. Off by default, because replicas on one host, the
    # embedded stack and each test process would otherwise contend for one
    # fixed port. The ingress serves `/metrics` on its HTTP port instead, and
    # telemetry reads `SLUICE_TELEMETRY_METRICS_PORT`.
    safety_metrics_port: int = Field(default=0, ge=0, le=65535)
    assignment_metrics_port: int = Field(default=0, ge=0, le=65535)
    inference_metrics_port: int = Field(default=0, ge=0, le=65535)
    moderation_metrics_port: int = Field(default=0, ge=0, le=65535)

    log_level: str = "INFO"

    @property
    def resolved_nats_url(self) -> str:
        return self.nats_url or f"nats://{self.host}:{self.nats_port}"

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb:///{self.data_dir / 'clickhouse'}"

    @property
    def resolved_model_server_url(self) -> str:
        return self.model_server_url or f"http://{self.host}:{self.model_server_port}"

    @property
    def resolved_api_keys_file(self) -> Path:
        return self.api_keys_file or self.data_dir / "api-keys.json"

    @property
    def dev_api_key_file(self) -> Path:
        """The plain development key that `sluice up` prints and the CLI falls back to."""
        return self.data_dir / "dev-api-key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment once."""
    return Settings()
