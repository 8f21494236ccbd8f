"""Run the model server: `python -m services.model_server`, configured by the `SLUICE_*` settings."""

from __future__ import annotations

import asyncio

import structlog
import uvicorn

from services.model_server.app import create_app, load_engine
from services.model_server.registry import registered_adapters
from shared.logs import configure_logging
from shared.settings import get_settings

log = structlog.get_logger(__name__)


def main() -> None:
    """Load the model, then listen on `host`:`model_server_port` until SIGINT or SIGTERM."""
    settings = get_settings()
    configure_logging("model_server", settings.log_level)
    log.info("service_starting", model_dir=str(settings.model_dir), port=settings.model_server_port)
    # With NATS configured, the registered adapters of the served model are served too; see docs/optimization.md.
    registered = asyncio.run(registered_adapters(settings.nats_url, settings.model_dir)) if settings.nats_url else {}
    engine = load_engine(
        settings.model_dir, settings.model_server_max_concurrent_generations, settings.model_adapters_dir, registered
    )
    app = create_app(engine)
    # log_config=None keeps uvicorn's loggers on the JSON handler configured above.
    uvicorn.run(app, host=settings.host, port=settings.model_server_port, log_config=None)
    log.info("service_stopped")


if __name__ == "__main__":
    main()
