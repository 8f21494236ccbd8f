"""`sluice feedback REQUEST_ID`: send a rating, thumbs, conversion or value on a request."""

from __future__ import annotations

import uuid

from services.cli.client import SluiceClient


class MetadataError(ValueError):
    """A `--metadata` option is not KEY=VALUE."""


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    """Return the `KEY=VALUE` pairs as a dict; raises `MetadataError` naming the first malformed pair.

    The value may contain `=`; only the first one separates the key. The
    server checks the limits on keys and values.
    """
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise MetadataError(f"invalid --metadata {pair!r}: write KEY=VALUE, e.g. --metadata page=pricing")
        metadata[key] = value
    return metadata


def new_idempotency_key() -> str:
    """Return a fresh key for a submission that names none; the command prints it so a retry can reuse it."""
    return str(uuid.uuid4())


async def send_feedback(
    client: SluiceClient, request_id: str, kind: str, value: float, metadata: dict[str, str], idempotency_key: str
) -> dict:
    """Send the feedback and return the API's `{feedback_id, status}`; raises `ClientError`."""
    body = {"request_id": request_id, "kind": kind, "value": value, "metadata": metadata}
    async with client:
        return await client.feedback(body, idempotency_key)
