"""An HTTP and WebSocket client for the ingress API, used by every `sluice` command that talks to a running stack."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import websockets

# Generation on the embedded CPU model takes seconds; reports scan ClickHouse.
# Neither should hang a terminal for longer than this.
DEFAULT_HTTP_TIMEOUT_S = 60.0


class ClientError(RuntimeError):
    """A request to the ingress did not succeed."""


class ConnectionFailed(ClientError):
    """The ingress could not be reached, or the connection broke."""


class ApiError(ClientError):
    """The API returned an error status; the message is the server's explanation."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


@dataclass(frozen=True)
class Submission:
    request_id: str
    status_url: str
    stream_url: str


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return json.dumps(body)


class SluiceClient:
    """Talks to one ingress. Use as an async context manager; not safe to share across event loops."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> None:
        self.base_url = base_url
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.AsyncClient(base_url=base_url, headers=self._headers, timeout=timeout_s)

    async def __aenter__(self) -> SluiceClient:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self._http.aclose()

    async def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> Submission:
        """POST a request; raises `ApiError` unless the API returns 202."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        async with self._translate_errors():
            response = await self._http.post("/v1/requests", json=body, headers=headers)
        if response.status_code != 202:
            raise ApiError(response.status_code, _error_message(response))
        accepted = response.json()
        return Submission(accepted["request_id"], accepted["status_url"], accepted["stream_url"])

    async def status(self, request_id: str) -> dict[str, Any]:
        return await self._get_json(f"/v1/requests/{request_id}")

    async def cancel(self, request_id: str) -> dict[str, Any]:
        """DELETE the request; raises `ApiError` unless the API returns 202 (404 unknown, 409 already ended)."""
        async with self._translate_errors():
            response = await self._http.delete(f"/v1/requests/{request_id}")
        if response.status_code != 202:
            raise ApiError(response.status_code, _error_message(response))
        return response.json()

    async def feedback(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST feedback; return `{feedback_id, status}`.

        Raises `ApiError` unless the API returns 202 (accepted) or 200 (a
        repeat of `idempotency_key` with the same body).
        """
        async with self._translate_errors():
            response = await self._http.post("/v1/feedback", json=body, headers={"Idempotency-Key": idempotency_key})
        if response.status_code not in (200, 202):
            raise ApiError(response.status_code, _error_message(response))
        return response.json()

    async def summary(self, since: str | None = None, until: str | None = None) -> dict[str, Any]:
        params = {key: value for key, value in {"since": since, "until": until}.items() if value}
        return await self._get_json("/v1/reports/summary", params=params)

    async def analytics_report(self, name: str, filters: dict[str, str | None]) -> dict[str, Any]:
        """Return the canned report `name` (latency, throughput, cost, safety, errors, feedback); `filters` left None are not sent."""
        params = {key: value for key, value in filters.items() if value is not None}
        return await self._get_json(f"/v1/reports/{name}", params=params)

    async def experiment_report(self, key: str, filters: dict[str, str | None]) -> dict[str, Any]:
        """Return the analysis of experiment `key`; `filters` (since, until) left None are not sent."""
        params = {name: value for name, value in filters.items() if value is not None}
        return await self._get_json(f"/v1/reports/experiment/{quote(key, safe='')}", params=params)

    async def drift_states(self) -> dict[str, Any]:
        """Return `{states}`: the latest drift comparison of every signal and model variant of the key's tenant."""
        return await self._get_json("/v1/reports/drift")

    async def drift_history(self, signal: str) -> dict[str, Any]:
        """Return `{signal, points}`: the alarm statistic of `signal` at each evaluation, oldest first."""
        return await self._get_json("/v1/reports/drift/history", params={"signal": signal})

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run read-only SQL over the key's tenant's events; return `{columns, rows}`.

        Raises `ApiError` unless the API returns 200 (400 names what the store rejected).
        """
        body = {"sql": sql, "parameters": parameters or {}}
        async with self._translate_errors():
            response = await self._http.post("/v1/analytics/query", json=body)
        if response.status_code != 200:
            raise ApiError(response.status_code, _error_message(response))
        return response.json()

    async def stream(self, stream_url: str, offset: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Yield the released messages of a request, chunks then the final message."""
        url = f"{stream_url}?offset={offset}" if offset else stream_url
        async with self._translate_errors():
            async with websockets.connect(url, additional_headers=self._headers) as connection:
                async for raw in connection:
                    message = json.loads(raw)
                    yield message
                    if message.get("type") == "final":
                        return
        raise ConnectionFailed(f"the stream at {stream_url} closed before its final message")

    @asynccontextmanager
    async def _translate_errors(self) -> AsyncIterator[None]:
        """Turn transport errors of httpx and websockets into `ConnectionFailed` naming the URL."""
        try:
            yield
        except websockets.InvalidStatus as error:
            raise ApiError(error.response.status_code, error.response.body.decode(errors="replace")) from error
        except (httpx.TransportError, websockets.WebSocketException, OSError) as error:
            raise ConnectionFailed(
                f"cannot reach Sluice at {self.base_url} ({error.__class__.__name__}: {error}); "
                "is `sluice up` running there? Set SLUICE_URL or --url to another address"
            ) from error

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        async with self._translate_errors():
            response = await self._http.get(path, params=params)
        if response.status_code != 200:
            raise ApiError(response.status_code, _error_message(response))
        return response.json()
