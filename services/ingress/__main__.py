"""`python -m services.ingress`: serve the ingress API with uvicorn on SLUICE_HOST:SLUICE_HTTP_PORT."""

from __future__ import annotations

import sys

import structlog
import uvicorn

from shared.api_keys import ApiKeyFileError
from shared.logs import configure_logging
from shared.settings import get_settings

from services.ingress.app import create_app

log = structlog.get_logger(__name__)


def main() -> None:
    settings = get_settings()
    configure_logging("ingress", settings.log_level)
    try:
        app = create_app(settings)
    except ApiKeyFileError as error:
        log.error("service_start_failed", error=str(error))
        sys.exit(1)
    log.info("service_starting", host=settings.host, http_port=settings.http_port)
    # log_config=None keeps uvicorn's loggers on the JSON handler configured
    # above; the access log is off because the routes log what matters.
    uvicorn.run(app, host=settings.host, port=settings.http_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
