"""Reading the Locust scenario's settings from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from load_tests.locust_settings import DEFAULT_MAX_NEW_TOKENS, ScenarioSettings, ScenarioSettingsError

SCENARIO_VARIABLES = (
    "SLUICE_URL",
    "SLUICE_API_KEY",
    "SLUICE_HOST",
    "SLUICE_HTTP_PORT",
    "SLUICE_LOCUST_MAX_NEW_TOKENS",
    "SLUICE_LOCUST_TIMEOUT_S",
    "SLUICE_LOCUST_POLL_INTERVAL_S",
    "SLUICE_LOCUST_MAX_REQUESTS",
)


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give the scenario a data folder with a development key and a prompts folder with one prompt per file."""
    for variable in SCENARIO_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dev-api-key").write_text("sk-from-file\n")
    prompts_dir = tmp_path / "prompts"
    prompts_dir.mkdir()
    for name in ("mt_bench.jsonl", "self_instruct_user.jsonl"):
        (prompts_dir / name).write_text(json.dumps({"text": f"a prompt from {name}"}) + "\n")
    monkeypatch.setenv("SLUICE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("SLUICE_LOCUST_PROMPTS_DIR", str(prompts_dir))
    return tmp_path


def test_settings_default_to_embedded_stack(environment: Path) -> None:
    settings = ScenarioSettings.from_environment()

    assert settings.base_url == "http://127.0.0.1:8000"
    assert settings.api_key == "sk-from-file"
    assert settings.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert settings.max_requests is None


def test_settings_read_both_prompt_files(environment: Path) -> None:
    settings = ScenarioSettings.from_environment()

    assert settings.prompts == ("a prompt from mt_bench.jsonl", "a prompt from self_instruct_user.jsonl")


def test_environment_overrides_url_and_key(environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_URL", "http://10.0.0.5:9000/")
    monkeypatch.setenv("SLUICE_API_KEY", "sk-from-env")

    settings = ScenarioSettings.from_environment()

    assert settings.base_url == "http://10.0.0.5:9000"
    assert settings.api_key == "sk-from-env"


def test_url_follows_http_port(environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_HTTP_PORT", "18000")

    assert ScenarioSettings.from_environment().base_url == "http://127.0.0.1:18000"


def test_max_requests_read_from_environment(environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_LOCUST_MAX_REQUESTS", "500")

    assert ScenarioSettings.from_environment().max_requests == 500


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLUICE_LOCUST_MAX_REQUESTS", "0"),
        ("SLUICE_LOCUST_MAX_REQUESTS", "many"),
        ("SLUICE_LOCUST_MAX_NEW_TOKENS", "2.5"),
        ("SLUICE_LOCUST_TIMEOUT_S", "-1"),
        ("SLUICE_LOCUST_POLL_INTERVAL_S", "nan"),
    ],
)
def test_invalid_number_names_variable(
    environment: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ScenarioSettingsError, match=f"{variable}='{value}' is invalid"):
        ScenarioSettings.from_environment()


def test_missing_key_names_variable(environment: Path) -> None:
    (environment / "data" / "dev-api-key").unlink()

    with pytest.raises(ScenarioSettingsError, match="set SLUICE_API_KEY"):
        ScenarioSettings.from_environment()


def test_missing_prompt_file_names_variable(environment: Path) -> None:
    (environment / "prompts" / "mt_bench.jsonl").unlink()

    with pytest.raises(ScenarioSettingsError, match="set SLUICE_LOCUST_PROMPTS_DIR"):
        ScenarioSettings.from_environment()
