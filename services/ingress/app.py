"""The ingress application: builds every component once and wires the routes and the projector to them.

One NATS connection (a FastStream broker) carries the published events,
the `request-state` consumer and the feedback subject's subscription. One
Redis client serves the status records, idempotency keys and release logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import nats.errors
import redis.asyncio as redis
import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.nats import NatsBroker
from redis.exceptions import RedisError

from shared.bus import EventPublisher, ensure_jetstream, make_broker
from shared.cancellation import CancelMarks
from shared.config_store import EXPERIMENTS_KEY, WatchedConfig, experiments_parser
from shared.experiments import ExperimentsFile, load_serving_config
from shared.pulling import PullLoop
from shared.queue_positions import QueuePositions
from shared.release_log import ReleaseLog
from shared.settings import Settings
from shared.store_client import StoreClient

from services.ingress.acceptance import RequestAcceptor
from services.ingress.auth import ApiKeyAuthenticator, tenant_dependency
from services.ingress.cancellation import RequestCanceller
from services.ingress.errors import install_error_handlers
from services.ingress.feedback import FeedbackRecorder
from services.ingress.feedback_attribution import AttributionChecker
from services.ingress.feedback_subject import FeedbackResponder
from services.ingress.idempotency import FEEDBACK_KEY_PREFIX, IdempotencyStore
from services.ingress.metrics import IngressMetrics, RequestDurationMiddleware, metrics_router
from services.ingress.projector import RequestStateProjector
from services.ingress.quotas import QuotaLimiter
from services.ingress.routes_analytics import analytics_router
from services.ingress.routes_feedback import feedback_router
from services.ingress.routes_openai import CompletionServer, openai_router
from services.ingress.routes_experiments import experiments_router
from services.ingress.routes_reports import reports_router
from services.ingress.routes_requests import requests_router
from services.ingress.state_store import RequestStateStore
from services.ingress.streaming import ReleaseStreamer, stream_router

log = structlog.get_logger(__name__)

# `/healthz` waits this long for each of NATS and Redis, so one hung
# dependency cannot hang the probe.
HEALTH_CHECK_TIMEOUT_S = 1.0
# Open streams plus in-flight requests; redis-server's own default limit is
# 10,000 clients, so several ingress replicas fit under it.
REDIS_MAX_CONNECTIONS = 1000
# A request waits this long for a Redis connection before it fails with 503.
REDIS_POOL_WAIT_TIMEOUT_S = 5.0


def _redis_pool(url: str) -> redis.BlockingConnectionPool:
    """Return a pool that makes a caller wait for a free connection instead of failing.

    Every open WebSocket holds a connection during its blocking read, so a
    burst of streams would otherwise exhaust the pool and fail submissions.
    """
    return redis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT_TIMEOUT_S
    )


def create_app(settings: Settings) -> FastAPI:
    """Build the ingress app; NATS and Redis are connected when the app's lifespan starts.

    Raises `shared.api_keys.ApiKeyFileError` when the API key file is missing or malformed, and
    `shared.experiments.ConfigError` when the experiments or backends file is invalid.
    The experiments that the OpenAI `model` field names come from the
    configuration bucket, seeded from `settings.experiments_file`, and follow
    each valid change without a restart.
    """
    authenticator = ApiKeyAuthenticator.from_file(settings.resolved_api_keys_file)
    broker = make_broker(settings.resolved_nats_url)
    publisher = EventPublisher(broker)
    redis_client = redis.Redis(connection_pool=_redis_pool(settings.resolved_redis_url))
    state_store = RequestStateStore(redis_client, settings.request_state_ttl_s)
    release_log = ReleaseLog(redis_client, settings.request_state_ttl_s)
    queue_positions = QueuePositions(redis_client, settings.request_state_ttl_s)
    projector = RequestStateProjector(redis_client, state_store, release_log, queue_positions).puller()
    metrics = IngressMetrics()
    acceptor = RequestAcceptor(
        state_store=state_store,
        idempotency=IdempotencyStore(redis_client, settings.idempotency_ttl_s),
        publisher=publisher,
        max_prompt_chars=settings.max_prompt_chars,
        request_timeout_s=settings.request_timeout_s,
        quotas=QuotaLimiter(redis_client),
        accepted_counter=metrics.requests_accepted,
    )

    feedback = _feedback_recorder(settings, redis_client, state_store, publisher, broker)
    feedback_responder = FeedbackResponder(feedback)

    # Checks both files now, so an invalid one fails here with its path in the message.
    load_serving_config(settings)
    experiments = WatchedConfig(EXPERIMENTS_KEY, settings.experiments_file, experiments_parser(settings))
    lifespan = _lifespan(broker, projector, redis_client, authenticator, experiments, feedback_responder, settings)
    app = FastAPI(title="Sluice ingress", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(RequestDurationMiddleware, histogram=metrics.request_duration)
    tenant = tenant_dependency(authenticator)
    marks = CancelMarks(redis_client, settings.request_state_ttl_s)
    canceller = RequestCanceller(state_store, marks, publisher, queue_positions, lambda: broker.connection)
    app.include_router(requests_router(tenant, acceptor, state_store, canceller, queue_positions))
    streamer = ReleaseStreamer(release_log, state_store, settings.request_timeout_s)
    app.include_router(stream_router(authenticator, state_store, streamer, metrics.streams_in_flight))
    app.include_router(reports_router(tenant, lambda: broker.connection))
    app.include_router(analytics_router(tenant, lambda: broker.connection))
    app.include_router(experiments_router(tenant, lambda: broker.connection, lambda: experiments.current))
    app.include_router(feedback_router(tenant, feedback))
    completions = CompletionServer(acceptor, release_log, canceller, settings.request_timeout_s)
    app.include_router(openai_router(tenant, completions, lambda: experiments.current))
    app.include_router(_health_router(broker, redis_client))
    app.include_router(metrics_router(metrics.registry))
    return app


def _feedback_recorder(
    settings: Settings,
    redis_client: redis.Redis,
    state_store: RequestStateStore,
    publisher: EventPublisher,
    broker: NatsBroker,
) -> FeedbackRecorder:
    attribution = AttributionChecker(
        store=lambda: StoreClient(broker.connection),
        state_store=state_store,
        window_s=settings.feedback_attribution_window_s,
    )
    idempotency = IdempotencyStore(redis_client, settings.feedback_idempotency_ttl_s, key_prefix=FEEDBACK_KEY_PREFIX)
    return FeedbackRecorder(idempotency=idempotency, attribution=attribution, publisher=publisher)


def _lifespan(
    broker: NatsBroker,
    projector: PullLoop,
    redis_client: redis.Redis,
    authenticator: ApiKeyAuthenticator,
    experiments: WatchedConfig[ExperimentsFile],
    feedback_responder: FeedbackResponder,
    settings: Settings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await redis_client.ping()
        connection = await broker.connect()
        # The topology must exist before the first publish and before the projector binds its consumer.
        await ensure_jetstream(connection.jetstream())
        # Every API key is loaded before the app serves its first request.
        await authenticator.start(connection.jetstream())
        await experiments.start(connection.jetstream())
        await broker.start()
        await projector.start(connection.jetstream())
        await feedback_responder.start(connection)
        log.info("service_started", nats_url=settings.resolved_nats_url, http_port=settings.http_port)
        try:
            yield
        finally:
            await feedback_responder.stop()
            await projector.stop()
            await authenticator.stop()
            await experiments.stop()
            await _stop_broker(broker)
            await redis_client.aclose()
            log.info("service_stopped")

    return lifespan


async def _stop_broker(broker: NatsBroker) -> None:
    """Stop the subscribers and drain the NATS connection; a connection that is down is only logged."""
    try:
        await broker.stop()
    except nats.errors.Error as error:
        log.warning("nats_drain_failed", error=repr(error))


async def _redis_reachable(redis_client: redis.Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(redis_client.ping(), HEALTH_CHECK_TIMEOUT_S))
    except (RedisError, TimeoutError) as error:
        log.warning("health_check_failed", dependency="redis", error=repr(error))
        return False


def _health_router(broker: NatsBroker, redis_client: redis.Redis) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        """Return 200 when NATS and Redis are reachable, else 503 naming the one that is not; needs no API key."""
        checks = {
            "nats": await broker.ping(timeout=HEALTH_CHECK_TIMEOUT_S),
            "redis": await _redis_reachable(redis_client),
        }
        healthy = all(checks.values())
        body = {"status": "ok" if healthy else "unavailable", **{name: "ok" if up else "unreachable" for name, up in checks.items()}}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return router
