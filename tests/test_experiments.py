"""Loading experiments.yaml and backends.yaml: the shipped files, variable expansion and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.experiments import ConfigError, load_backends, load_experiments, load_serving_config
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


def test_coverage_above_one_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("  - key: sampling\n", "  - key: sampling\n    coverage: 1.5\n"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "experiments.0.coverage = 1.5" in str(caught.value)
    assert "less than or equal to 1" in str(caught.value)


def test_hash_version_three_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("  - key: sampling\n", "  - key: sampling\n    hash_version: 3\n"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "experiments.0.hash_version = 3" in str(caught.value)


def test_seed_defaults_to_key(tmp_path: Path) -> None:
    experiments = load_experiments(_write(tmp_path, "e.yaml", EXPERIMENTS_YAML), {})

    assert experiments.experiments[0].resolved_seed == "sampling"
    assert experiments.experiments[0].hash_version == 2


def test_weights_not_summing_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("{key: control, weight: 0.5", "{key: control, weight: 0.3"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "experiments.0.variants" in str(caught.value)
    assert "weights sum to 0.8" in str(caught.value)


def test_partial_weights_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("{key: cooler, weight: 0.5,", "{key: cooler,"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "set weight on every variant or on none" in str(caught.value)


def test_duplicate_variant_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("key: cooler", "key: control"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "variant key 'control' appears more than once" in str(caught.value)


def test_unknown_field_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("  - key: sampling\n", "  - key: sampling\n    weights: [0.5, 0.5]\n"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "experiments.0.weights" in str(caught.value)


def test_invalid_variant_params_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.yaml", EXPERIMENTS_YAML.replace("temperature: 0.8", "temperature: 3.0"))

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "experiments.0.variants.0.params.temperature = 3.0" in str(caught.value)


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
    path = _write(tmp_path, "e.yaml", "experiments: [unclosed\n")

    with pytest.raises(ConfigError) as caught:
        load_experiments(path, {})

    assert "invalid YAML" in str(caught.value)
