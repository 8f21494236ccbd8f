"""Loading experiments.yaml and backends.yaml: the shipped files, variable expansion and error messages."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.experiments import BackendConfig, ConfigError, load_backends, load_experiments, load_serving_config
from shared.settings import Settings

BACKENDS_YAML = """
backends:
  embedded:
    kind: tgi
    url: "${SLUICE_MODEL_SERVER_URL}"
"""

EXPERIMENTS_YAML = """
default_variant: {key: default, backend: embedded}
experiments:
  - key: sampling
    variants:
      - {key: control, weight: 0.5, backend: embedded, params: {temperature: 0.8}}
      - {key: cooler, weight: 0.5, backend: embedded, params: {temperature: 0.5, top_p: 0.9}}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _settings(tmp_path: Path, experiments: str = EXPERIMENTS_YAML, backends: str = BACKENDS_YAML, **fields: object) -> Settings:
    return Settings(
        experiments_file=_write(tmp_path, "experiments.yaml", experiments),
        backends_file=_write(tmp_path, "backends.yaml", backends),
        **fields,
    )


def _edited(old: str, new: str) -> str:
    """Return `EXPERIMENTS_YAML` with `old` replaced by `new`. Fails the test when `old` does not occur in it."""
    assert old in EXPERIMENTS_YAML, f"{old!r} does not occur in EXPERIMENTS_YAML"
    return EXPERIMENTS_YAML.replace(old, new)


def _experiments_error(tmp_path: Path, text: str) -> str:
    """Load `text` as experiments.yaml and return the `ConfigError` message. Fails the test when loading succeeds."""
    path = _write(tmp_path, "e.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})
    return str(caught.value)


def test_shipped_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_MODEL_SERVER_URL", raising=False)

    config = load_serving_config(Settings(model_server_url=""))

    experiment = config.experiments.experiments[0]
    assert [variant.key for variant in experiment.variants] == ["control", "cooler"]
    assert [variant.weight for variant in experiment.variants] == [0.5, 0.5]
    assert experiment.variants[1].params.temperature == 0.5
    assert experiment.variants[1].params.top_p == 0.9
    assert config.backends["embedded"].url == Settings(model_server_url="").resolved_model_server_url


def test_unset_url_falls_back_to_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_MODEL_SERVER_URL", raising=False)

    config = load_serving_config(_settings(tmp_path, model_server_port=9123))

    assert config.backends["embedded"].url == "http://127.0.0.1:9123"


def test_url_variable_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_MODEL_SERVER_URL", "http://models.internal:8080")

    config = load_serving_config(_settings(tmp_path))

    assert config.backends["embedded"].url == "http://models.internal:8080"


def test_unset_variable_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_TEST_UNSET_URL", raising=False)
    path = _write(tmp_path, "backends.yaml", 'backends:\n  remote:\n    kind: tgi\n    url: "${SLUICE_TEST_UNSET_URL}"\n')

    with pytest.raises(ConfigError) as caught:
        load_backends(path, {})

    assert str(path) in str(caught.value)
    assert "backends.remote.url" in str(caught.value)
    assert "SLUICE_TEST_UNSET_URL" in str(caught.value)


def test_timeout_defaults_apply(tmp_path: Path) -> None:
    backends = load_backends(_write(tmp_path, "b.yaml", "backends:\n  b: {kind: tgi, url: 'http://h:1'}\n"), {})

    assert backends["b"].connect_timeout_s > 0
    assert backends["b"].first_token_timeout_s > 0


def test_unknown_kind_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.yaml", "backends:\n  b: {kind: vllm, url: 'http://h:1'}\n")

    with pytest.raises(ConfigError) as caught:
        load_backends(path, {})

    assert "backends.b.kind = 'vllm'" in str(caught.value)
    assert "'tgi'" in str(caught.value)


def test_backend_name_must_be_subject_token(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.yaml", "backends:\n  gpu.pool: {kind: tgi, url: 'http://h:1'}\n")

    with pytest.raises(ConfigError) as caught:
        load_backends(path, {})

    assert "'gpu.pool'" in str(caught.value)
    assert "[key]" in str(caught.value)


def test_seed_defaults_to_key(tmp_path: Path) -> None:
    experiments = load_experiments(_write(tmp_path, "e.yaml", EXPERIMENTS_YAML), {})

    assert experiments.experiments[0].resolved_seed == "sampling"
    assert experiments.experiments[0].hash_version == 2


# Each case edits EXPERIMENTS_YAML (old text, new text) and lists fragments the error message must contain.
INVALID_EXPERIMENT_CASES = [
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    coverage: 1.5\n",
        ["experiments.0.coverage = 1.5", "less than or equal to 1"],
        id="coverage-above-one",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    hash_version: 3\n",
        ["experiments.0.hash_version = 3"],
        id="hash-version-three",
    ),
    pytest.param(
        "{key: control, weight: 0.5",
        "{key: control, weight: 0.3",
        ["experiments.0.variants", "weights sum to 0.8"],
        id="weights-not-summing",
    ),
    pytest.param(
        "{key: cooler, weight: 0.5,",
        "{key: cooler,",
        ["set weight on every variant or on none"],
        id="partial-weights",
    ),
    pytest.param(
        "key: cooler",
        "key: control",
        ["variant key 'control' appears more than once"],
        id="duplicate-variant",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    weights: [0.5, 0.5]\n",
        ["experiments.0.weights"],
        id="unknown-field",
    ),
    pytest.param(
        "temperature: 0.8",
        "temperature: 3.0",
        ["experiments.0.variants.0.params.temperature = 3.0"],
        id="invalid-variant-params",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    forced_variants: {qa-tester: warmer}\n",
        ["forced_variants maps unit 'qa-tester' to variant 'warmer'", "['control', 'cooler']"],
        id="forced-variant-unknown",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    start: 2025-06-01T00:00:00\n",
        ["experiments.0.start", "has no time zone", "2025-06-01T00:00:00Z"],
        id="start-without-time-zone",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    start: 2025-07-01T00:00:00Z\n    stop: 2025-06-01T00:00:00Z\n",
        ["stop 2025-06-01T00:00:00+00:00 must be after start 2025-07-01T00:00:00+00:00"],
        id="stop-before-start",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    start: 2025-06-01T00:00:00Z\n    stop: 2025-06-01T00:00:00Z\n",
        ["must be after start"],
        id="stop-equals-start",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    min_bucket_version: 2\n    bucket_version: 1\n",
        ["min_bucket_version 2 is above bucket_version 1"],
        id="min-bucket-version-above",
    ),
    pytest.param(
        "  - key: sampling\n",
        "  - key: sampling\n    bucket_version: -1\n",
        ["experiments.0.bucket_version = -1"],
        id="negative-bucket-version",
    ),
    pytest.param(
        "params: {temperature: 0.8}",
        "prompt_template: 'Answer in verse.', params: {temperature: 0.8}",
        ["experiments.0.variants.0.prompt_template", "contains {prompt} 0 times", "exactly once"],
        id="template-without-placeholder",
    ),
    pytest.param(
        "params: {temperature: 0.8}",
        "prompt_template: '{prompt} {prompt}', params: {temperature: 0.8}",
        ["contains {prompt} 2 times"],
        id="template-with-two-placeholders",
    ),
]


def test_new_experiment_fields_load(tmp_path: Path) -> None:
    text = _edited(
        "  - key: sampling\n",
        "  - key: sampling\n"
        "    forced_variants: {qa-tester: cooler}\n"
        "    start: 2025-06-01T00:00:00Z\n"
        "    stop: 2025-07-01T02:00:00+02:00\n"
        "    bucket_version: 3\n"
        "    min_bucket_version: 2\n"
        "    condition: {metadata.country: {$in: [NL, BE]}}\n",
    ).replace("{key: control, weight: 0.5,", "{key: control, weight: 0.5, quantization: awq, prompt_template: 'Verse: {prompt}',")

    experiment = load_experiments(_write(tmp_path, "e.yaml", text), {}).experiments[0]

    assert experiment.forced_variants == {"qa-tester": "cooler"}
    assert experiment.stop == datetime(2025, 7, 1, tzinfo=timezone.utc)
    assert (experiment.bucket_version, experiment.min_bucket_version) == (3, 2)
    assert experiment.condition == {"metadata.country": {"$in": ["NL", "BE"]}}
    spec = experiment.variants[0].to_spec()
    assert spec.quantization == "awq"
    assert spec.prompt_template == "Verse: {prompt}"


def test_new_fields_default_off(tmp_path: Path) -> None:
    experiment = load_experiments(_write(tmp_path, "e.yaml", EXPERIMENTS_YAML), {}).experiments[0]

    assert experiment.forced_variants == {}
    assert (experiment.start, experiment.stop) == (None, None)
    assert (experiment.bucket_version, experiment.min_bucket_version) == (0, 0)
    assert experiment.variants[0].to_spec().quantization is None
    assert experiment.variants[0].to_spec().prompt_template is None


@pytest.mark.parametrize(("old", "new", "fragments"), INVALID_EXPERIMENT_CASES)
def test_invalid_experiment_rejected(tmp_path: Path, old: str, new: str, fragments: list[str]) -> None:
    message = _experiments_error(tmp_path, _edited(old, new))

    for fragment in fragments:
        assert fragment in message


def test_unknown_backend_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_MODEL_SERVER_URL", raising=False)
    experiments = EXPERIMENTS_YAML.replace("weight: 0.5, backend: embedded, params: {temperature: 0.5", "weight: 0.5, backend: gpu-pool, params: {temperature: 0.5")
    settings = _settings(tmp_path, experiments=experiments)

    with pytest.raises(ConfigError) as caught:
        load_serving_config(settings)

    assert "variant 'cooler' names backend 'gpu-pool'" in str(caught.value)
    assert "['embedded']" in str(caught.value)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiments(tmp_path / "absent.yaml", {})

    assert "absent.yaml: file not found" in str(caught.value)


def test_invalid_yaml_named(tmp_path: Path) -> None:
    message = _experiments_error(tmp_path, "experiments: [unclosed\n")

    assert "invalid YAML" in message


def test_openai_backend_accepted() -> None:
    config = BackendConfig(kind="openai", url="http://127.0.0.1:8000", model="llama-3-8b", api_key_env="VLLM_API_KEY")

    assert config.kind == "openai"
    assert config.model == "llama-3-8b"
    assert config.api_key_env == "VLLM_API_KEY"


@pytest.mark.parametrize("bad", ["sk-live-123", "has space", ""])
def test_api_key_env_must_be_variable_name(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BackendConfig(kind="openai", url="http://127.0.0.1:8000", api_key_env=bad)

    assert "api_key_env" in str(caught.value)
