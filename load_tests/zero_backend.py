"""A zero-cost backend that speaks the part of TGI's HTTP API that the inference service uses.

`POST /v1/chat/completions` returns `max_tokens` tokens (32 when the
request leaves it out), all written at once with no generation cost. A
streaming reply has the framing of TGI and of the embedded model server: one
`data:{json}` chunk per token, the last with `finish_reason` "length", a usage
chunk when `stream_options.include_usage` is set, then `data: [DONE]`.
`GET /health` returns 200 and `GET /info` a small JSON body.

The server is raw asyncio HTTP/1.1 with keep-alive and pipelining and no
framework, so that the direct baseline measures the network path and the
client, not a web stack. Each distinct reply body is built once and cached.
It ignores sampling parameters and stop sequences, and it reports 0 prompt
tokens because it has no tokenizer.

Run it on its own: `python -m load_tests.zero_backend --port PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from functools import lru_cache
from typing import Any, cast

# The token count of a request that sets no max_tokens, the same count the
# pipeline benchmark requests.
DEFAULT_MAX_TOKENS = 32
# Larger requests get HTTP 422, so one request cannot make the server build a huge body.
MAX_TOKENS_LIMIT = 4096
# Every token is this text, so moderation's output scanners pass it.
TOKEN_TEXT = " word"
MODEL_ID = "zero-backend"
# A request head larger than this gets HTTP 431 and the connection closes.
MAX_HEAD_BYTES = 64 * 1024
# A request body larger than this gets HTTP 413 and the connection closes.
MAX_BODY_BYTES = 1024 * 1024

DONE_EVENT = b"data: [DONE]\n\n"
_HEAD_END = b"\r\n\r\n"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 422: "Unprocessable Entity",
            431: "Request Header Fields Too Large", 501: "Not Implemented"}


class RequestError(ValueError):
    """A request that the server rejects, with the HTTP status of the reply in `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _sse_event(body: dict[str, Any]) -> bytes:
    return b"data:" + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
    return {"id": "chatcmpl-zero", "object": "chat.completion.chunk", "created": 0, "model": MODEL_ID,
            "system_fingerprint": MODEL_ID, "choices": choices, "usage": usage}


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}


@lru_cache(maxsize=64)
def stream_body(tokens: int, include_usage: bool) -> bytes:
    """Return the SSE body of a streamed completion of `tokens` tokens."""
    events = []
    for index in range(tokens):
        finish = "length" if index == tokens - 1 else None
        delta = {"role": "assistant", "content": TOKEN_TEXT}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        events.append(_sse_event(_chunk([choice], None)))
    if include_usage:
        events.append(_sse_event(_chunk([], _usage(tokens))))
    events.append(DONE_EVENT)
    return b"".join(events)


@lru_cache(maxsize=64)
def completion_body(tokens: int) -> bytes:
    """Return the JSON body of a completion of `tokens` tokens that was not streamed."""
    message = {"role": "assistant", "content": TOKEN_TEXT * tokens}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
    body = {"id": "chatcmpl-zero", "object": "chat.completion", "created": 0, "model": MODEL_ID,
            "system_fingerprint": MODEL_ID, "choices": [choice], "usage": _usage(tokens)}
    return json.dumps(body).encode()


INFO_BODY = json.dumps({"model_id": MODEL_ID, "model_dtype": "none", "model_device_type": "cpu",
                        "max_input_tokens": 4096, "max_total_tokens": 8192, "version": "zero"}).encode()


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """Return a whole HTTP/1.1 response with a Content-Length, which keeps the connection reusable."""
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Cache-Control: no-cache\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def error_response(error: RequestError) -> bytes:
    return response(error.status, json.dumps({"error": str(error), "error_type": "validation"}).encode())


def requested_tokens(request: dict[str, Any]) -> int:
    """Return the request's `max_tokens`, checked. Raises `RequestError`."""
    tokens = request.get("max_tokens")
    if tokens is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(422, f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {tokens!r}")
    return tokens


def chat_completion(body: bytes) -> bytes:
    """Return the response to a `POST /v1/chat/completions` with JSON `body`. Raises `RequestError`."""
    try:
        request = json.loads(body)
    except ValueError as error:
        raise RequestError(400, f"the body is not valid JSON: {error}") from error
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object")
    tokens = requested_tokens(request)
    if not request.get("stream"):
        return response(200, completion_body(tokens))
    options = request.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    return response(200, stream_body(tokens, include_usage), "text/event-stream")


def route(method: bytes, path: bytes, body: bytes) -> bytes:
    """Return the response to one request. Raises `RequestError`."""
    if method == b"POST" and path == b"/v1/chat/completions":
        return chat_completion(body)
    if method == b"GET" and path == b"/health":
        return response(200, b"")
    if method == b"GET" and path == b"/info":
        return response(200, INFO_BODY)
    raise RequestError(404, f"no route for {method.decode(errors='replace')} {path.decode(errors='replace')}")


class RequestHead:
    """The parts of a request head the server acts on."""

    def __init__(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise RequestError(400, "invalid request line")
        self.method = parts[0]
        self.path = parts[1].split(b"?", 1)[0]
        self.content_length = 0
        self.close = parts[2] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self._header(name.strip().lower(), value.strip())

    def _header(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                raise RequestError(413, f"Content-Length must be a number up to {MAX_BODY_BYTES} bytes")
            self.content_length = int(value)
        elif name == b"transfer-encoding":
            raise RequestError(501, "chunked request bodies are not supported: send a Content-Length")
        elif name == b"connection":
            self.close = value.lower() == b"close"


class HttpProtocol(asyncio.Protocol):
    """One client connection: parses pipelined requests from the buffer and writes each response whole."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: RequestHead | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._transport is not None and self._serve_one():
                pass
        except RequestError as error:
            self._reply(error_response(error), close=True)

    def _serve_one(self) -> bool:
        """Serve the first complete request in the buffer, or return False when the buffer contains none."""
        if self._head is None:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise RequestError(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
                return False
            self._head = RequestHead(bytes(self._buffer[:end]))
            del self._buffer[: end + len(_HEAD_END)]
        head = self._head
        if len(self._buffer) < head.content_length:
            return False
        body = bytes(self._buffer[: head.content_length])
        del self._buffer[: head.content_length]
        self._head = None
        try:
            reply = route(head.method, head.path, body)
        except RequestError as error:
            reply = error_response(error)
        self._reply(reply, close=head.close)
        return True

    def _reply(self, data: bytes, close: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(data)
        if close:
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int) -> None:
    """Serve on `host:port` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopped.set)
    server = await loop.create_server(HttpProtocol, host, port, backlog=4096)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.zero_backend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
