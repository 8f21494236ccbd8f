"""Starting the embedded servers and reporting the errors a user can fix."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.embedded.infrastructure import InfrastructureError, ManagedProcess, check_port_free, free_port, start_nats
from shared.embedded.stack import EmbeddedStack, StackError
from shared.settings import Settings


def test_port_in_use_names_setting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(InfrastructureError, match=f"port {port}.*SLUICE_NATS_PORT"):
            check_port_free("127.0.0.1", port, "SLUICE_NATS_PORT")


@pytest.mark.nats
def test_nats_starts_with_jetstream(tmp_path: Path) -> None:
    server = start_nats("127.0.0.1", free_port(), tmp_path, tmp_path / "logs")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as connection:
            banner = connection.recv(4096).decode()
    finally:
        server.stop()
    assert '"jetstream":true' in banner.replace(" ", "")


def test_stack_refuses_taken_http_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = EmbeddedStack(Settings(data_dir=tmp_path, http_port=port))
        with pytest.raises(StackError, match="SLUICE_HTTP_PORT"):
            stack.start()
    assert stack.processes == []


def test_exited_child_is_reported(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    stack = EmbeddedStack(Settings(data_dir=tmp_path))
    stack.processes.append(ManagedProcess("safety", process, 0, tmp_path / "safety.log"))

    with pytest.raises(StackError, match="safety exited with code 3"):
        stack.raise_if_exited()


def test_second_stack_on_data_dir_refused(tmp_path: Path) -> None:
    first = EmbeddedStack(Settings(data_dir=tmp_path))
    first._lock_data_dir()
    try:
        second = EmbeddedStack(Settings(data_dir=tmp_path, http_port=free_port()))
        with pytest.raises(StackError, match="in use by another `sluice up`.*SLUICE_DATA_DIR"):
            second.start()
    finally:
        first.stop()
