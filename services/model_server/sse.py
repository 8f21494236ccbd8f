"""Server-sent event framing as TGI writes it: `data:{json}` lines separated by a blank line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

# OpenAI's end-of-stream marker; huggingface_hub compares the stripped line with exactly this text.
DONE_EVENT = "data: [DONE]\n\n"
SSE_MEDIA_TYPE = "text/event-stream"


def sse_event(body: dict[str, Any]) -> str:
    """Frame `body` as one server-sent event."""
    return f"data:{json.dumps(body, separators=(',', ':'))}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """Stream the strings of the async iterator `events` with headers that stop proxies from buffering."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type=SSE_MEDIA_TYPE, headers=headers)
