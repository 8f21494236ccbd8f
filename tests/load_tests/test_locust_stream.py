"""Reading a WebSocket stream with websocket-client, against a real WebSocket server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

# websocket-client comes with locust, in the `bench` extra, not with the test dependencies.
pytest.importorskip("websocket")

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.server import ServerConnection, serve  # noqa: E402

from load_tests.locust_outcomes import RequestTimedOut, StreamBroken  # noqa: E402
from load_tests.locust_stream import stream_messages  # noqa: E402

CHUNKS = [{"type": "chunk", "seq": 0, "text": "To be"}, {"type": "chunk", "seq": 1, "text": " or not"}]
FINAL = {"type": "final", "status": "completed", "finish_reason": "length"}
# Long enough for a loopback round trip on a loaded machine, short enough for a fast test.
DEADLINE_S = 5.0
# How long the server waits for a silent client to leave before it gives up.
SERVER_WAIT_S = 5.0
# The server of websockets 17 waits up to 10 s (its close_timeout) for a client that
# replied to the close frame but left the TCP connection open.
CLOSING_HANDSHAKE_S = 2.0

# Set once the server's closing handshake of `/closes-early` has finished.
early_close_done = threading.Event()


def handle(connection: ServerConnection) -> None:
    """Serve the behaviour the request path names."""
    path = connection.request.path
    if path == "/complete":
        for message in [*CHUNKS, FINAL]:
            connection.send(json.dumps(message))
        connection.close(1000)
    elif path == "/closes-early":
        connection.send(json.dumps(CHUNKS[0]))
        connection.close(4408, "no output within the request timeout")
        early_close_done.set()
    elif path == "/not-json":
        connection.send("<html>")
    elif path == "/echo-authorization":
        connection.send(json.dumps({"type": "final", "authorization": connection.request.headers["Authorization"]}))
    try:
        connection.recv(timeout=SERVER_WAIT_S)
    except (ConnectionClosed, TimeoutError):
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with serve(handle, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        host, port = server.socket.getsockname()
        yield f"ws://{host}:{port}"
        server.shutdown()
    thread.join(timeout=SERVER_WAIT_S)


def read_all(url: str, deadline_s: float = DEADLINE_S, headers: dict[str, str] | None = None) -> list[dict]:
    return list(stream_messages(url, headers or {}, time.perf_counter() + deadline_s))


def test_stream_yields_chunks_then_final(server_url: str) -> None:
    assert read_all(f"{server_url}/complete") == [*CHUNKS, FINAL]


def test_stream_sends_headers(server_url: str) -> None:
    messages = read_all(f"{server_url}/echo-authorization", headers={"Authorization": "Bearer sk-test"})

    assert messages[0]["authorization"] == "Bearer sk-test"


def test_early_close_names_code_and_reason(server_url: str) -> None:
    with pytest.raises(StreamBroken, match="code 4408: no output within the request timeout"):
        read_all(f"{server_url}/closes-early")


def test_early_close_releases_connection(server_url: str) -> None:
    early_close_done.clear()

    with pytest.raises(StreamBroken):
        read_all(f"{server_url}/closes-early")

    assert early_close_done.wait(timeout=CLOSING_HANDSHAKE_S)


def test_silent_stream_times_out(server_url: str) -> None:
    started = time.perf_counter()

    with pytest.raises(RequestTimedOut):
        read_all(f"{server_url}/silent", deadline_s=0.3)

    assert time.perf_counter() - started < DEADLINE_S


def test_non_json_message_breaks_stream(server_url: str) -> None:
    with pytest.raises(StreamBroken, match="not JSON"):
        read_all(f"{server_url}/not-json")


def test_refused_connection_breaks_stream(server_url: str) -> None:
    with pytest.raises(StreamBroken, match="connection failed"):
        read_all("ws://127.0.0.1:1/complete")
