"""Publishing a CLI job's result events (an evaluation's) straight to the EVENTS stream, where telemetry stores them."""

from __future__ import annotations

import nats
import nats.errors

from services.cli.nats_buckets import CONNECT_TIMEOUT_S, fail
from shared.events import Envelope
from shared.subjects import EVENTS_STREAM, event_subject


async def publish_envelopes(nats_url: str, envelopes: list[Envelope], skip_hint: str) -> None:
    """Publish to the EVENTS stream and wait for each ack; raise `typer.Exit` with a clear error when NATS fails.

    `skip_hint` names the option that runs the command without publishing,
    such as "pass --no-publish", for the error message.
    """
    try:
        connection = await nats.connect(
            nats_url, connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=1
        )
    except (nats.errors.Error, OSError) as error:
        raise fail(
            f"cannot reach NATS at {nats_url} ({error}); start the stack with `sluice up`, "
            f"or set --nats-url or SLUICE_NATS_URL to a running server, or {skip_hint}"
        ) from error
    try:
        jetstream = connection.jetstream()
        for envelope in envelopes:
            data = envelope.model_dump_json().encode()
            # The event id as message id, so JetStream's duplicate window drops a retried publish.
            headers = {"Nats-Msg-Id": envelope.event_id}
            await jetstream.publish(event_subject(envelope.type), data, stream=EVENTS_STREAM, headers=headers)
    except nats.errors.Error as error:
        raise fail(f"publishing the results to {nats_url} failed ({error!r}); check that the stack is running") from error
    finally:
        await connection.close()
