"""The experiment and backend configuration: pydantic models and loading with clear errors.

`experiments.yaml` lists the A/B experiments and the variant that serves
requests outside every experiment. `backends.yaml` names the model servers
those variants run on. Both files are validated when a service starts. A
string value may contain `${NAME}`, which is replaced by the environment
variable NAME before validation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from growthbook.core import WEIGHT_SUM_MAX, WEIGHT_SUM_MIN
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.events import GenerationParams, VariantSpec
from shared.settings import Settings

# A connection to a model server on the same host or network opens in
# milliseconds. 5 s tolerates a loaded host, and a server that is down still
# fails fast instead of holding the request.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# The first token may wait for queueing in the model server and for the
# prefill of a long prompt.
DEFAULT_FIRST_TOKEN_TIMEOUT_S = 30.0
# A healthy stream sends a token every few tens of milliseconds, so a 30 s gap
# means the server hangs.
DEFAULT_TOKEN_TIMEOUT_S = 30.0

# The growthbook SDK (4.0.0) silently replaces weights that sum to less than
# WEIGHT_SUM_MIN (0.99) or more than WEIGHT_SUM_MAX (1.01) with equal
# weights, so the loader rejects such weights instead.
# The environment variable that backends.yaml uses for the embedded model
# server. When it is unset, `Settings.resolved_model_server_url` is used.
MODEL_SERVER_URL_VARIABLE = "SLUICE_MODEL_SERVER_URL"

# An error message shows at most this much of an invalid value, so a whole
# list of variants does not bury the reason.
_MAX_SHOWN_VALUE_CHARS = 80

_VARIABLE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A configuration file is missing, is not valid YAML or does not fit its schema.

    The message names the file, the key path, the value found and what is allowed.
    """


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Config):
    """One model server. Every timeout is in seconds.

    `kind` picks the client: `tgi` (huggingface_hub's TGI client) or `openai`
    (the `openai` package, for vLLM, SGLang and any OpenAI-compatible
    server). `model` is the model name an `openai` backend sends when the
    variant names none. `api_key_env` names the environment variable that
    contains an `openai` backend's API key, so the key is never written in the file.
    """

    kind: Literal["tgi", "openai"]
    url: str = Field(pattern=r"^https?://\S+$")
    model: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    first_token_timeout_s: float = Field(default=DEFAULT_FIRST_TOKEN_TIMEOUT_S, gt=0)
    token_timeout_s: float = Field(default=DEFAULT_TOKEN_TIMEOUT_S, gt=0)


class VariantConfig(_Config):
    """One arm of an experiment, or the default variant.

    `weight` is the share of units in [0, 1]. It is omitted either for every
    variant of an experiment, which splits the units equally, or for none.
    """

    key: str = Field(min_length=1)
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    backend: str = Field(min_length=1)
    model: str | None = None
    adapter_id: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)

    def to_spec(self) -> VariantSpec:
        return VariantSpec(
            key=self.key, backend=self.backend, model=self.model, adapter_id=self.adapter_id, params=self.params
        )


class Namespace(_Config):
    """A slice [start, end) of the namespace `name`: experiments in disjoint slices never share a unit."""

    name: str = Field(min_length=1)
    start: float = Field(ge=0.0, le=1.0)
    end: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_order(self) -> Namespace:
        if self.start >= self.end:
            raise ValueError(f"start {self.start} must be below end {self.end}")
        return self


class ExperimentConfig(_Config):
    """An A/B experiment, with GrowthBook's hashing parameters.

    `seed` defaults to `key`. `coverage` is the share of units in [0, 1] that
    enter the experiment. `condition` is accepted but not evaluated yet: an
    experiment that sets it is skipped.
    """

    key: str = Field(min_length=1)
    hash_attribute: Literal["user_id"] = "user_id"
    hash_version: Literal[1, 2] = 2
    seed: str | None = None
    coverage: float = Field(default=1.0, ge=0.0, le=1.0)
    namespace: Namespace | None = None
    condition: dict[str, Any] | None = None
    variants: list[VariantConfig] = Field(min_length=1)

    @property
    def resolved_seed(self) -> str:
        return self.key if self.seed is None else self.seed

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, variants: list[VariantConfig]) -> list[VariantConfig]:
        _check_unique([variant.key for variant in variants], "variant key")
        _check_weights([variant.weight for variant in variants])
        return variants


class ExperimentsFile(_Config):
    """The contents of experiments.yaml. Experiments are tried in order, and the first that takes the unit wins."""

    experiments: list[ExperimentConfig] = Field(default_factory=list)
    default_variant: VariantConfig

    @field_validator("experiments")
    @classmethod
    def _check_experiment_keys(cls, experiments: list[ExperimentConfig]) -> list[ExperimentConfig]:
        _check_unique([experiment.key for experiment in experiments], "experiment key")
        return experiments

    def variants(self) -> list[VariantConfig]:
        """Return every variant, the default one included."""
        return [variant for experiment in self.experiments for variant in experiment.variants] + [self.default_variant]


class BackendsFile(_Config):
    """The contents of backends.yaml: backend name to backend."""

    backends: dict[str, BackendConfig] = Field(min_length=1)


@dataclass(frozen=True)
class ServingConfig:
    """Both files, checked against each other: every variant names a backend that exists."""

    experiments: ExperimentsFile
    backends: dict[str, BackendConfig]


def _check_unique(keys: list[str], what: str) -> None:
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"{what} {duplicates[0]!r} appears more than once, but each {what} must be unique")


def _check_weights(weights: list[float | None]) -> None:
    given = [weight for weight in weights if weight is not None]
    if not given:
        return
    if len(given) != len(weights):
        raise ValueError("set weight on every variant or on none (none splits the units equally)")
    total = sum(given)
    if not WEIGHT_SUM_MIN <= total <= WEIGHT_SUM_MAX:
        raise ValueError(
            f"weights sum to {total:g}, but they must sum to 1 (from {WEIGHT_SUM_MIN} to {WEIGHT_SUM_MAX})"
        )


def expand_variables(value: Any, variables: Mapping[str, str], path: Path, key_path: str = "") -> Any:
    """Return a copy of a parsed YAML tree with every `${NAME}` in a string replaced by `variables[NAME]`.

    Raises `ConfigError` naming the key path when a referenced variable is not set.
    """
    if isinstance(value, dict):
        return {key: expand_variables(item, variables, path, _join(key_path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_variables(item, variables, path, _join(key_path, index)) for index, item in enumerate(value)]
    if isinstance(value, str):
        return _VARIABLE_REFERENCE.sub(lambda match: _lookup(match.group(1), variables, path, key_path), value)
    return value


def _lookup(name: str, variables: Mapping[str, str], path: Path, key_path: str) -> str:
    if name not in variables:
        raise ConfigError(
            f"{path}: {key_path} refers to environment variable {name}, which is not set. Set it or edit the file"
        )
    return variables[name]


def _join(key_path: str, key: object) -> str:
    return f"{key_path}.{key}" if key_path else str(key)


def _read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as config_file:
            return yaml.safe_load(config_file)
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found. Create it or point the setting at another file") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error


def _validate(model: type[_Config], data: Any, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, path)) from error


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: {error.error_count()} invalid value(s):"]
    for detail in error.errors():
        key_path = ".".join(str(part) for part in detail["loc"]) or "(top level)"
        lines.append(f"  {key_path} = {_shorten(repr(detail['input']))}: {detail['msg']}")
    return "\n".join(lines)


def _shorten(text: str) -> str:
    if len(text) <= _MAX_SHOWN_VALUE_CHARS:
        return text
    return text[: _MAX_SHOWN_VALUE_CHARS - 3] + "..."


def load_experiments(path: Path, variables: Mapping[str, str]) -> ExperimentsFile:
    """Read and validate experiments.yaml. Raises `ConfigError`."""
    data = expand_variables(_read_yaml(path), variables, path)
    return _validate(ExperimentsFile, data, path)


def load_backends(path: Path, variables: Mapping[str, str]) -> dict[str, BackendConfig]:
    """Read and validate backends.yaml and return backend name to backend. Raises `ConfigError`."""
    data = expand_variables(_read_yaml(path), variables, path)
    return _validate(BackendsFile, data, path).backends


def config_variables(settings: Settings) -> dict[str, str]:
    """Return the variables that `${NAME}` may refer to: the environment, plus the model server URL fallback."""
    return {**os.environ, MODEL_SERVER_URL_VARIABLE: settings.resolved_model_server_url}


def load_serving_config(settings: Settings) -> ServingConfig:
    """Load both files named in `settings` and check that every variant's backend exists. Raises `ConfigError`."""
    variables = config_variables(settings)
    experiments = load_experiments(settings.experiments_file, variables)
    backends = load_backends(settings.backends_file, variables)
    for variant in experiments.variants():
        if variant.backend not in backends:
            raise ConfigError(
                f"{settings.experiments_file}: variant {variant.key!r} names backend {variant.backend!r}, "
                f"which {settings.backends_file} does not define; defined backends: {sorted(backends)}"
            )
    return ServingConfig(experiments=experiments, backends=backends)
