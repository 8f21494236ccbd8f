"""The embedded stack: infrastructure and every service as supervised child processes.

`sluice up` runs it in the foreground, and the end-to-end tests start it once
per session. Both go through `EmbeddedStack`, so they run the same processes
the same way.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import nats
import structlog
from nats.js.errors import NotFoundError

from shared.api_keys import ensure_dev_key
from shared.embedded.infrastructure import (
    InfrastructureError,
    ManagedProcess,
    check_port_free,
    die_with_parent,
    free_port,
    start_nats,
    start_redis,
    wait_for_port,
)
from shared.settings import REPO_ROOT, Settings
from shared.subjects import (
    ASSIGNMENT_CONSUMER,
    MODERATION_CONSUMER,
    REQUEST_STATE_CONSUMER,
    SAFETY_CONSUMER,
    TELEMETRY_CONSUMER,
    ConsumerSpec,
)

log = structlog.get_logger(__name__)

# Services import llm-guard and torch, which takes about 10 s on two cores.
# A service not fetching from its consumer after this long has failed to start.
SERVICE_READY_TIMEOUT_S = 180.0
# Held with flock while a stack runs on the data folder.
LOCK_FILE_NAME = "sluice-up.lock"
# How often the supervisor checks that every child is still alive.
SUPERVISE_INTERVAL_S = 0.5
# A child gets this long to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ServiceSpec:
    """A service module and the durable consumer whose pull requests show that it is running."""

    name: str
    consumer: ConsumerSpec | None


# Started in this order and stopped in reverse: telemetry first so no event
# waits for it, ingress last so no request arrives before the stages run.
BUS_SERVICES = (
    ServiceSpec("telemetry", TELEMETRY_CONSUMER),
    ServiceSpec("safety", SAFETY_CONSUMER),
    ServiceSpec("assignment", ASSIGNMENT_CONSUMER),
    # Inference binds a tenant's pool queue consumer only when that tenant's
    # work arrives, so an idle inference service has no pull request to wait
    # for. Requests assigned before it runs wait in JetStream.
    ServiceSpec("inference", None),
    ServiceSpec("moderation", MODERATION_CONSUMER),
    # Drift reads the store on a schedule and consumes nothing, so there is
    # no pull request to wait for.
    ServiceSpec("drift", None),
    ServiceSpec("ingress", REQUEST_STATE_CONSUMER),
)


class StackError(RuntimeError):
    """The stack could not start, or one of its processes exited."""


@dataclass
class EmbeddedStack:
    """Starts, watches and stops every process of the embedded stack.

    Not thread-safe; call `start` once and `stop` once.
    """

    settings: Settings
    processes: list[ManagedProcess] = field(default_factory=list)
    api_key: str = ""
    _lock_file: IO[str] | None = None

    @classmethod
    def on_free_ports(cls, data_dir: Path, **overrides: object) -> EmbeddedStack:
        """Return a stack whose servers take free loopback ports and keep their files in `data_dir`.

        `overrides` sets further `Settings` fields; every child gets them all.
        """
        ports = {
            "http_port": free_port(),
            "nats_port": free_port(),
            "redis_port": free_port(),
            "model_server_port": free_port(),
        }
        return cls(Settings(data_dir=data_dir, **ports, **overrides))

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.http_port}"

    def child_environment(self) -> dict[str, str]:
        """Return the environment every child gets: the resolved URLs, so children never guess."""
        settings = self.settings
        env = dict(os.environ)
        # Every setting, so a stack built from Settings in code (tests,
        # benchmarks) runs its children with the same values.
        env.update(
            {
                f"SLUICE_{name.upper()}": str(value)
                for name, value in settings.model_dump().items()
                if value is not None
            }
        )
        env.update(
            {
                "SLUICE_DATA_DIR": str(settings.data_dir),
                "SLUICE_HOST": settings.host,
                "SLUICE_HTTP_PORT": str(settings.http_port),
                "SLUICE_MODEL_SERVER_PORT": str(settings.model_server_port),
                "SLUICE_NATS_URL": settings.resolved_nats_url,
                "SLUICE_REDIS_URL": settings.resolved_redis_url,
                "SLUICE_CLICKHOUSE_DSN": settings.resolved_clickhouse_dsn,
                "SLUICE_MODEL_SERVER_URL": settings.resolved_model_server_url,
                "SLUICE_API_KEYS_FILE": str(settings.resolved_api_keys_file),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "TIKTOKEN_CACHE_DIR": str(settings.data_dir / "tiktoken"),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        return env

    def check_ports(self) -> None:
        """Fail before starting anything when a port the stack needs is taken."""
        settings = self.settings
        ports = [("SLUICE_HTTP_PORT", settings.http_port), ("SLUICE_MODEL_SERVER_PORT", settings.model_server_port)]
        if not settings.nats_url:
            ports.append(("SLUICE_NATS_PORT", settings.nats_port))
        if not settings.redis_url:
            ports.append(("SLUICE_REDIS_PORT", settings.redis_port))
        for setting, port in ports:
            check_port_free(settings.host, port, setting)

    def start(self, progress: Callable[[str], None] = lambda _message: None) -> None:
        """Start every process and wait until each is ready; on failure stop what started and raise `StackError`."""
        try:
            self._start(progress)
        except (InfrastructureError, StackError, OSError) as error:
            self.stop()
            raise StackError(str(error)) from error

    def _start(self, progress: Callable[[str], None]) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self.check_ports()
        self.api_key = ensure_dev_key(settings.resolved_api_keys_file, settings.dev_api_key_file)
        if not settings.nats_url:
            progress("starting nats-server")
            self.processes.append(start_nats(settings.host, settings.nats_port, settings.data_dir, self.log_dir))
        if not settings.redis_url:
            progress("starting redis-server")
            self.processes.append(start_redis(settings.host, settings.redis_port, settings.data_dir, self.log_dir))
        progress("starting model_server")
        self._start_model_server()
        for service in BUS_SERVICES:
            progress(f"starting {service.name}")
            self._spawn_service(service.name)
        progress("waiting for the services to take work")
        asyncio.run(self._wait_for_consumers())
        self._wait_for_http(f"{self.http_url}/healthz", "ingress")

    def _lock_data_dir(self) -> None:
        """Take an exclusive lock on the data folder: two stacks must not share its stores."""
        path = self.settings.data_dir / LOCK_FILE_NAME
        lock_file = path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise StackError(
                f"data folder {self.settings.data_dir} is in use by another `sluice up` (pid {holder}); "
                "stop that one or set SLUICE_DATA_DIR to another folder"
            ) from error
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file

    def _spawn_service(self, name: str) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=REPO_ROOT,
                env=self.child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        port = self.settings.http_port if name == "ingress" else 0
        managed = ManagedProcess(name, process, port, log_path)
        self.processes.append(managed)
        return managed

    def _start_model_server(self) -> None:
        managed = self._spawn_service("model_server")
        managed.port = self.settings.model_server_port
        # The model server imports torch and loads the model before it listens, as slowly as the services start.
        wait_for_port(
            self.settings.host, managed.port, managed.process, "model_server", managed.log_path, SERVICE_READY_TIMEOUT_S
        )
        self._wait_for_http(f"{self.settings.resolved_model_server_url}/health", "model_server")

    def _wait_for_http(self, url: str, name: str) -> None:
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.raise_if_exited()
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(SUPERVISE_INTERVAL_S)
        raise StackError(f"{name} did not return HTTP 200 on {url} within {SERVICE_READY_TIMEOUT_S} s; see {self.log_dir}")

    async def _wait_for_consumers(self) -> None:
        """Wait until every bus service has a pull request waiting on its durable consumer."""
        connection = await nats.connect(self.settings.resolved_nats_url)
        try:
            js = connection.jetstream()
            deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
            pending = {service.name: service.consumer for service in BUS_SERVICES if service.consumer}
            while pending:
                self.raise_if_exited()
                if time.monotonic() > deadline:
                    raise StackError(
                        f"services {sorted(pending)} did not start within {SERVICE_READY_TIMEOUT_S} s; "
                        f"see their logs in {self.log_dir}"
                    )
                for name, consumer in list(pending.items()):
                    try:
                        info = await js.consumer_info(consumer.stream, consumer.durable)
                    except NotFoundError:
                        continue
                    if info.num_waiting and info.num_waiting > 0:
                        del pending[name]
                await asyncio.sleep(SUPERVISE_INTERVAL_S)
        finally:
            await connection.close()

    def exited(self) -> ManagedProcess | None:
        """Return the first child that has exited, if any."""
        return next((child for child in self.processes if child.process.poll() is not None), None)

    def raise_if_exited(self) -> None:
        child = self.exited()
        if child is None:
            return
        code = child.process.returncode
        how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"
        raise StackError(f"{child.name} {how}; its log is {child.log_path}")

    def stop(self) -> None:
        """Stop every child in reverse start order: services first, then the servers they use."""
        for child in reversed(self.processes):
            child.stop(STOP_TIMEOUT_S)
        self.processes.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
