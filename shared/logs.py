"""structlog configuration for service entry points; library modules only call `structlog.get_logger`."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer


def configure_logging(service: str, level: str = "INFO", *, cache_loggers: bool = True) -> None:
    """Send JSON log lines to stderr, each with the service name, level and an ISO UTC timestamp.

    Call once, from a service's `__main__`. The standard library's loggers
    (uvicorn, faststream, nats) go through the same renderer. A service
    caches each logger on first use, which saves a configuration lookup per
    line. A CLI command passes `cache_loggers=False`, because it may run
    inside another process (a test, a notebook), whose loggers would keep
    this configuration after the command returns.
    """
    numeric_level = logging.getLevelName(level.upper())
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Frame locals would copy message payloads, prompts among them, into the log.
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
    ]
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared_processors],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # FastStream attaches its own plain-text handler and logs each subscriber
    # task callback at INFO; route it through the JSON renderer and keep only
    # its warnings and errors, since the services log their own events.
    faststream_logger = logging.getLogger("faststream")
    faststream_logger.handlers.clear()
    faststream_logger.propagate = True
    faststream_logger.setLevel(max(numeric_level, logging.WARNING))
    # httpx logs every request at INFO, which on a hot path costs more than the request.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def _add_service(service: str) -> structlog.types.Processor:
    def add_service(_logger: object, _name: str, event_dict: dict) -> dict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service
