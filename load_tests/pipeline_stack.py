"""The processes the pipeline benchmark measures: the zero-cost backend and the embedded stack wired to it.

Also the two probes the benchmark reads around each run: the CPU time of
every process and whether the pipeline's consumers have drained.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import nats
import psutil
import yaml
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from load_tests.pipeline_results import ZERO_BACKEND_COLUMN
from shared.embedded.infrastructure import die_with_parent, free_port, wait_for_port
from shared.embedded.stack import EmbeddedStack
from shared.settings import REPO_ROOT
from shared.subjects import CONSUMERS

# The name of the backend in the benchmark's backends.yaml.
ZERO_BACKEND_NAME = "zero"
# The backend starts in well under a second, so this only bounds a broken start.
ZERO_BACKEND_READY_TIMEOUT_S = 15.0
# The zero backend gets this long to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0
# How often the idle check reads the consumers' state.
IDLE_POLL_INTERVAL_S = 0.25


class ZeroBackend:
    """The zero-cost TGI-protocol backend as a child process on a free loopback port. Use as a context manager."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ZeroBackend:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "load_tests.zero_backend", "--host", self.host, "--port", str(self.port)]
        with self._log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            wait_for_port(self.host, self.port, self.process, "zero backend", self._log_path)
            httpx.get(f"{self.url}/health", timeout=ZERO_BACKEND_READY_TIMEOUT_S).raise_for_status()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_serving_config(folder: Path, backend_url: str, max_new_tokens: int) -> tuple[Path, Path]:
    """Write experiments.yaml and backends.yaml that send every variant to `backend_url`, and return both paths.

    The experiments have the shape of the shipped file: a 50/50 experiment
    and a default variant, so assignment does its usual work.
    """
    params = {"max_new_tokens": max_new_tokens, "temperature": 0.8}
    variant = {"backend": ZERO_BACKEND_NAME, "model": "zero-backend", "params": params}
    experiments = {
        "default_variant": {"key": "default", **variant},
        "experiments": [
            {
                "key": "bench-split",
                "variants": [
                    {"key": "control", "weight": 0.5, **variant},
                    {"key": "treatment", "weight": 0.5, **variant},
                ],
            }
        ],
    }
    backends = {"backends": {ZERO_BACKEND_NAME: {"kind": "tgi", "url": backend_url}}}
    experiments_path = folder / "experiments.yaml"
    backends_path = folder / "backends.yaml"
    experiments_path.write_text(yaml.safe_dump(experiments, sort_keys=False))
    backends_path.write_text(yaml.safe_dump(backends, sort_keys=False))
    return experiments_path, backends_path


def bench_stack(data_dir: Path, experiments_file: Path, backends_file: Path, request_timeout_s: float) -> EmbeddedStack:
    """Return a stack on free ports in `data_dir` that serves the given config files. Call `start` on it."""
    return EmbeddedStack.on_free_ports(
        data_dir,
        experiments_file=experiments_file,
        backends_file=backends_file,
        request_timeout_s=request_timeout_s,
    )


@contextmanager
def bench_folder(data_dir: Path | None, prefix: str) -> Iterator[Path]:
    """Yield `data_dir`, created if needed and kept afterwards so its logs can be read, or a temporary folder."""
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


@contextmanager
def started_stack(
    root: Path, max_new_tokens: int, request_timeout_s: float
) -> Iterator[tuple[EmbeddedStack, ZeroBackend]]:
    """Start the zero backend and a stack in `root` whose every variant streams from it; stop both at the end."""
    with ZeroBackend(root / "logs" / "zero-backend.log") as backend:
        experiments, backends = write_serving_config(root, backend.url, max_new_tokens)
        stack = bench_stack(root / "stack", experiments, backends, request_timeout_s)
        stack.start()
        try:
            yield stack, backend
        finally:
            stack.stop()


def process_pids(stack: EmbeddedStack, backend: ZeroBackend) -> dict[str, int]:
    """Return the pid of every process the benchmarks measure, by the name their tables use."""
    pids = {child.name: child.process.pid for child in stack.processes}
    if backend.process is not None:
        pids[ZERO_BACKEND_COLUMN] = backend.process.pid
    return pids


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Return the user plus system CPU seconds each named process has used so far, or 0 for one that is gone."""
    used = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            used[name] = 0.0
            continue
        used[name] = times.user + times.system
    return used


async def wait_until_drained(nats_url: str, timeout_s: float) -> bool:
    """Wait until no durable consumer of the pipeline has pending or unacknowledged messages.

    Returns False when that did not happen within `timeout_s` seconds.
    """
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await _all_drained(js):
                return True
            await asyncio.sleep(IDLE_POLL_INTERVAL_S)
        return False
    finally:
        await connection.close()


async def _all_drained(js: JetStreamContext) -> bool:
    for consumer in CONSUMERS:
        try:
            info = await js.consumer_info(consumer.stream, consumer.durable)
        except NotFoundError:
            continue
        if info.num_pending or info.num_ack_pending:
            return False
    return True
