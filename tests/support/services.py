"""Starting a service module as a child process, as the embedded stack does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.settings import REPO_ROOT


def spawn_service(module: str, environment: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m MODULE` from the repository root, its stdout and stderr going to `log_path`."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
