"""Reading a request's WebSocket stream with websocket-client, the adapter for its errors.

websocket-client is synchronous: under Locust, whose gevent monkey-patching
makes sockets cooperative, each reader blocks only its own user's greenlet.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import websocket

from load_tests.locust_outcomes import RequestTimedOut, StreamBroken

# Closing waits for the server's close frame. The server closes right after
# the final message, so this bound only matters when it has stalled.
CLOSE_TIMEOUT_S = 1.0


def stream_messages(url: str, headers: dict[str, str], deadline: float) -> Iterator[dict[str, Any]]:
    """Yield the stream's JSON messages, chunks then the final one, and close the connection.

    `deadline` is a `time.perf_counter()` value. Raises `RequestTimedOut` when it
    passes before the final message, and `StreamBroken` when the connection
    fails or closes first, with the close code when the server sent one.
    """
    header_lines = [f"{name}: {value}" for name, value in headers.items()]
    with _translated_errors():
        connection = websocket.create_connection(url, header=header_lines, timeout=_remaining_s(deadline))
    try:
        while True:
            message = _receive(connection, deadline)
            yield message
            if message.get("type") == "final":
                return
    finally:
        # `close` does nothing after the client replied to the server's close frame,
        # which leaves the socket open until garbage collection. `shutdown` closes it.
        connection.close(timeout=CLOSE_TIMEOUT_S)
        connection.shutdown()


def _receive(connection: websocket.WebSocket, deadline: float) -> dict[str, Any]:
    with _translated_errors():
        connection.settimeout(_remaining_s(deadline))
        opcode, data = connection.recv_data()
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        raise StreamBroken(f"the stream closed before its final message ({_close_description(data)})")
    try:
        return json.loads(data)
    except ValueError as error:
        raise StreamBroken("the stream sent a message that is not JSON") from error


def _remaining_s(deadline: float) -> float:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise RequestTimedOut("no final message within the timeout")
    return remaining


def _close_description(data: bytes) -> str:
    """Describe a close frame's payload: a 2-byte code, then an optional UTF-8 reason (RFC 6455, 5.5.1)."""
    if len(data) < 2:
        return "no close code"
    (code,) = struct.unpack("!H", data[:2])
    reason = data[2:].decode(errors="replace")
    return f"code {code}: {reason}" if reason else f"code {code}"


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn websocket-client and socket errors into `RequestTimedOut` or `StreamBroken`."""
    try:
        yield
    except (websocket.WebSocketTimeoutException, TimeoutError) as error:
        raise RequestTimedOut("no final message within the timeout") from error
    except websocket.WebSocketBadStatusException as error:
        raise StreamBroken(f"the stream handshake returned HTTP {error.status_code}") from error
    except (websocket.WebSocketException, OSError) as error:
        raise StreamBroken(f"the stream connection failed ({error.__class__.__name__})") from error
