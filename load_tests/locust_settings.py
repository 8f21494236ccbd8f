"""The Locust scenario's settings, read once from the environment when the locustfile loads.

The address and the API key follow the `sluice` CLI: `SLUICE_URL`, else
`http://SLUICE_HOST:SLUICE_HTTP_PORT`, and `SLUICE_API_KEY`, else the
development key that `sluice up` wrote to its data folder (`SLUICE_DATA_DIR`).
The knobs of the scenario itself read `SLUICE_LOCUST_*` variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.cli.demo import PromptFileError, load_prompts
from shared.settings import REPO_ROOT, Settings

Number = int | float

URL_VARIABLE = "SLUICE_URL"
API_KEY_VARIABLE = "SLUICE_API_KEY"
MAX_NEW_TOKENS_VARIABLE = "SLUICE_LOCUST_MAX_NEW_TOKENS"
TIMEOUT_VARIABLE = "SLUICE_LOCUST_TIMEOUT_S"
POLL_INTERVAL_VARIABLE = "SLUICE_LOCUST_POLL_INTERVAL_S"
MAX_REQUESTS_VARIABLE = "SLUICE_LOCUST_MAX_REQUESTS"
PROMPTS_DIR_VARIABLE = "SLUICE_LOCUST_PROMPTS_DIR"

# The labelled prompt files live beside the repository, not in it.
DEFAULT_PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"
# Benign user requests of ordinary length, so requests normally travel the
# whole request path. A prompt that screening blocks counts as a failure.
PROMPT_FILES = ("mt_bench.jsonl", "self_instruct_user.jsonl")

# Short generations keep the figures about the pipeline more than the model.
# The embedded model writes 350 to 700 tokens/s to one stream on a 2-core CPU
# (measured without load), so 32 tokens take about 50 to 90 ms.
DEFAULT_MAX_NEW_TOKENS = 32
# A 32-token request still unfinished after 30 s means a stuck or badly
# overloaded pipeline, so it is reported as a timeout and not waited for.
DEFAULT_TIMEOUT_S = 30.0
# Polling every 50 ms bounds how late a polling client sees the end, while
# keeping the extra status reads small next to the streaming users' traffic.
DEFAULT_POLL_INTERVAL_S = 0.05


class ScenarioSettingsError(ValueError):
    """An environment variable of the scenario is invalid, or the API key or prompts are missing."""


@dataclass(frozen=True)
class ScenarioSettings:
    """Where the stack is, how to authenticate, what to send and when to give up."""

    base_url: str
    api_key: str
    prompts: tuple[str, ...]
    max_new_tokens: int
    timeout_s: float
    poll_interval_s: float
    # None: no limit, the run ends with `--run-time` or Ctrl-C.
    max_requests: int | None

    @classmethod
    def from_environment(cls) -> ScenarioSettings:
        """Read the settings from `os.environ`. Raises `ScenarioSettingsError` naming the variable to fix."""
        stack = Settings()
        return cls(
            base_url=_base_url(stack),
            api_key=_api_key(stack),
            prompts=_prompts(Path(os.environ.get(PROMPTS_DIR_VARIABLE) or DEFAULT_PROMPTS_DIR)),
            max_new_tokens=_positive(MAX_NEW_TOKENS_VARIABLE, int, DEFAULT_MAX_NEW_TOKENS, "a positive whole number of tokens"),
            timeout_s=_positive(TIMEOUT_VARIABLE, float, DEFAULT_TIMEOUT_S, "a positive number of seconds"),
            poll_interval_s=_positive(POLL_INTERVAL_VARIABLE, float, DEFAULT_POLL_INTERVAL_S, "a positive number of seconds"),
            max_requests=_positive(
                MAX_REQUESTS_VARIABLE, int, None, "a positive whole number of requests, or no value to stop only at --run-time"
            ),
        )


def _base_url(stack: Settings) -> str:
    url = os.environ.get(URL_VARIABLE) or f"http://{stack.host}:{stack.http_port}"
    return url.rstrip("/")


def _api_key(stack: Settings) -> str:
    key = os.environ.get(API_KEY_VARIABLE)
    if key:
        return key
    key_file = stack.dev_api_key_file
    if key_file.is_file():
        return key_file.read_text().strip()
    raise ScenarioSettingsError(
        f"no API key: set {API_KEY_VARIABLE}, or set SLUICE_DATA_DIR to the data folder of a running "
        f"`sluice up`, which writes the development key there ({key_file} does not exist)"
    )


def _prompts(folder: Path) -> tuple[str, ...]:
    prompts: list[str] = []
    for name in PROMPT_FILES:
        try:
            prompts += load_prompts(folder / name, limit=None)
        except PromptFileError as error:
            raise ScenarioSettingsError(f"{error}; set {PROMPTS_DIR_VARIABLE} to the folder that contains {name}") from error
    if not prompts:
        raise ScenarioSettingsError(f"the prompt files {', '.join(PROMPT_FILES)} in {folder} contain no prompts")
    return tuple(prompts)


def _positive(variable: str, parse: Callable[[str], Number], default: Number | None, expected: str) -> Number | None:
    """Parse `variable` with `parse`, or return `default` when it is unset or empty."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ScenarioSettingsError(f"{variable}={raw!r} is invalid: expected {expected}")
    return value
