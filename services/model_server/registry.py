"""Reading the model registry at startup: the registered LoRA adapters of the model this server serves.

The server reads the registry once, before it loads the model, so an
adapter registered later is served after the next restart.
"""

from __future__ import annotations

from pathlib import Path

import nats
import nats.errors
import structlog

from shared.model_registry import ModelRecord, adapters_of, list_models, open_model_registry
from shared.modeling import ModelLoadError
from shared.runtime_config import RuntimeConfigError

log = structlog.get_logger(__name__)

# NATS on the same host or network responds in milliseconds; a server that is
# down fails the start within seconds instead of hanging it.
CONNECT_TIMEOUT_S = 5.0


async def registered_adapters(nats_url: str, model_dir: Path) -> dict[str, Path]:
    """Return adapter id -> folder for every registered adapter whose base is registered at `model_dir`.

    An adapter whose folder no longer exists is logged and left out, so a
    deleted folder does not stop the server. Raises `ModelLoadError` when
    NATS or the registry bucket cannot be read.
    """
    try:
        # One attempt: nats-py otherwise retries the first connect up to 60 times, 2 s apart.
        connection = await nats.connect(
            nats_url, connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=1, error_cb=_ignore_error
        )
    except (nats.errors.Error, OSError) as error:
        raise ModelLoadError(f"cannot reach NATS at {nats_url} to read the model registry: {error!r}") from error
    try:
        records = await list_models(await open_model_registry(connection.jetstream()))
    except (nats.errors.Error, RuntimeConfigError, ValueError) as error:
        raise ModelLoadError(f"cannot read the model registry on {nats_url}: {error}") from error
    finally:
        await connection.close()
    return _existing_folders(adapters_of(records, model_dir))


async def _ignore_error(_error: Exception) -> None:
    """Keep nats-py from logging each failed attempt; the raised `ModelLoadError` reports the failure once."""


def _existing_folders(records: list[ModelRecord]) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for record in records:
        folder = Path(record.path)
        if folder.is_dir():
            folders[record.name] = folder
        else:
            log.warning("registered_adapter_missing", adapter=record.name, path=record.path)
    return folders
