"""Serving for the demonstration's A/B experiment: its backends and experiments files, and a second model server.

The embedded stack's own model server serves the base model as the
`embedded` backend. A second model server process, on a free loopback
port, serves the tuned and quantized folder as the `tuned` backend. The
experiment `EXPERIMENT_KEY` splits users 50/50 between the two, with greedy
decoding in both arms so that the task metric compares the models and not
the sampling.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.embedded.infrastructure import ManagedProcess, die_with_parent, free_port, wait_for_port
from shared.settings import REPO_ROOT

EXPERIMENT_KEY = "base-vs-tuned"
BASE_BACKEND = "embedded"
TUNED_BACKEND = "tuned"
BASE_VARIANT = "base"
# Loading torch, transformers and the model takes about 10 s on two cores, so
# a server without a response after this long has failed to start.
MODEL_SERVER_READY_TIMEOUT_S = 180.0
HEALTH_POLL_INTERVAL_S = 0.5
# The shipped backends file's timeouts for the embedded model server, in seconds.
CONNECT_TIMEOUT_S = 5
FIRST_TOKEN_TIMEOUT_S = 30
TOKEN_TIMEOUT_S = 30


class DemoServingError(RuntimeError):
    """The second model server did not start. The message names its log."""


@dataclass(frozen=True)
class Arm:
    """One variant of the experiment: its key, the backend serving it, the model's name and its quantization label."""

    variant: str
    backend: str
    model: str
    quantization: str | None


def backends_config(tuned_url: str) -> dict[str, Any]:
    """Return the backends file: the stack's own model server, and the second one at `tuned_url`."""
    timeouts = {
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
        "token_timeout_s": TOKEN_TIMEOUT_S,
    }
    return {
        "backends": {
            BASE_BACKEND: {"kind": "tgi", "url": "${SLUICE_MODEL_SERVER_URL}", **timeouts},
            TUNED_BACKEND: {"kind": "tgi", "url": tuned_url, **timeouts},
        }
    }


def experiments_config(control: Arm, treatment: Arm, max_new_tokens: int) -> dict[str, Any]:
    """Return the experiments file: `EXPERIMENT_KEY` with `control` and `treatment` at weight 0.5 each.

    Both arms decode greedily (temperature 0) up to `max_new_tokens`. Users
    that the experiment does not take get the control's settings.
    """
    params = {"max_new_tokens": max_new_tokens, "temperature": 0}
    variants = [_variant(arm, params) for arm in (control, treatment)]
    default = {key: value for key, value in variants[0].items() if key != "weight"} | {"key": "default"}
    experiment = {"key": EXPERIMENT_KEY, "hash_attribute": "user_id", "hash_version": 2, "coverage": 1.0, "variants": variants}
    return {"default_variant": default, "experiments": [experiment]}


def _variant(arm: Arm, params: dict[str, Any]) -> dict[str, Any]:
    variant: dict[str, Any] = {"key": arm.variant, "weight": 0.5, "backend": arm.backend, "model": arm.model}
    if arm.quantization is not None:
        variant["quantization"] = arm.quantization
    return variant | {"params": params}


def write_yaml(path: Path, value: dict[str, Any]) -> Path:
    """Write `value` to `path` as YAML and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(value, sort_keys=False), encoding="utf-8")
    return path


def start_model_server(model_dir: Path, environment: dict[str, str], log_path: Path) -> ManagedProcess:
    """Start `python -m services.model_server` on a free loopback port serving `model_dir`, without waiting for it.

    `environment` is the stack's child environment. The server gets its own
    port and model folder, and no NATS URL, so it reads no registry.
    """
    port = free_port()
    env = environment | {"SLUICE_MODEL_DIR": str(model_dir), "SLUICE_MODEL_SERVER_PORT": str(port), "SLUICE_NATS_URL": ""}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.model_server"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return ManagedProcess("tuned_model_server", process, port, log_path)


def wait_until_healthy(server: ManagedProcess, host: str) -> str:
    """Wait until `server` returns HTTP 200 on /health, and return its base URL. Raises `DemoServingError` when it exits or times out."""
    wait_for_port(host, server.port, server.process, server.name, server.log_path, MODEL_SERVER_READY_TIMEOUT_S)
    url = f"http://{host}:{server.port}"
    deadline = time.monotonic() + MODEL_SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DemoServingError(f"{server.name} exited with code {server.process.returncode} during start; see {server.log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_INTERVAL_S)
    raise DemoServingError(f"{server.name} did not return HTTP 200 on {url}/health within {MODEL_SERVER_READY_TIMEOUT_S} s; see {server.log_path}")
