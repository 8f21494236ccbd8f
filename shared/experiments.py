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
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from growthbook.core import WEIGHT_SUM_MAX, WEIGHT_SUM_MIN
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.events import GenerationParams, VariantSpec
from shared.settings import Settings
from shared.subjects import SUBJECT_TOKEN_PATTERN

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
# The embedded model server generates 4 requests at once
# (`Settings.model_server_max_concurrent_generations`). A request sent beyond
# that waits in the server's own queue, where it can no longer move to another
# endpoint, so the pool keeps it until a slot is free.
DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT = 4
# One request makes up to 3 tries (`MAX_BACKEND_TRIES` in the inference
# service), so 5 consecutive failures are more than one unlucky request and
# take a dead endpoint out after about two requests.
DEFAULT_BREAKER_FAILURE_THRESHOLD = 5
# While an endpoint is out, one trial call every 10 s costs at most one failed
# try per interval and brings a restarted server back within 10 s.
DEFAULT_BREAKER_OPEN_S = 10.0

# The placeholder that a variant's `prompt_template` must contain exactly once:
# the inference service replaces it with the last user message.
PROMPT_PLACEHOLDER = "{prompt}"

# The growthbook SDK (4.0.0) silently replaces weights that sum to less than
# WEIGHT_SUM_MIN (0.99) or more than WEIGHT_SUM_MAX (1.01) with equal
# weights, so the loader rejects such weights instead.
# The environment variable that backends.yaml uses for the embedded model
# server. When it is unset, `Settings.resolved_model_server_url` is used.
MODEL_SERVER_URL_VARIABLE = "SLUICE_MODEL_SERVER_URL"

# The model name that selects the usual routing (the experiments in order,
# then the default variant) for a client that must name a model, as OpenAI
# clients do.
AUTO_MODEL = "auto"

# An error message shows at most this much of an invalid value, so a whole
# list of variants does not bury the reason.
_MAX_SHOWN_VALUE_CHARS = 80

_VARIABLE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HTTP_URL_PATTERN = r"^https?://\S+$"


class ConfigError(ValueError):
    """A configuration file is missing, is not valid YAML or does not fit its schema.

    The message names the file, the key path, the value found and what is allowed.
    """


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Config):
    """A pool of model servers that serve the same model. Every timeout is in seconds.

    `kind` picks the client: `tgi` (huggingface_hub's TGI client) or `openai`
    (the `openai` package, for vLLM, SGLang and any OpenAI-compatible
    server). `url` names a single endpoint and `endpoints` several. Exactly
    one of the two is set. `model` is the model name an `openai` backend
    sends when the variant names none. `api_key_env` names the environment
    variable that contains an `openai` backend's API key, so the key is never
    written in the file. Each endpoint has its own circuit breaker: it opens
    after `breaker_failure_threshold` consecutive retryable failures, rejects
    calls for `breaker_open_s` seconds, then lets one trial call through.
    """

    kind: Literal["tgi", "openai"]
    url: str | None = Field(default=None, pattern=_HTTP_URL_PATTERN)
    endpoints: list[Annotated[str, Field(pattern=_HTTP_URL_PATTERN)]] | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    first_token_timeout_s: float = Field(default=DEFAULT_FIRST_TOKEN_TIMEOUT_S, gt=0)
    token_timeout_s: float = Field(default=DEFAULT_TOKEN_TIMEOUT_S, gt=0)
    max_in_flight_per_endpoint: int = Field(default=DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT, gt=0)
    breaker_failure_threshold: int = Field(default=DEFAULT_BREAKER_FAILURE_THRESHOLD, gt=0)
    breaker_open_s: float = Field(default=DEFAULT_BREAKER_OPEN_S, gt=0)

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, endpoints: list[str] | None) -> list[str] | None:
        if endpoints is not None:
            _check_unique(endpoints, "endpoint")
        return endpoints

    @model_validator(mode="after")
    def _check_one_location(self) -> BackendConfig:
        if self.url is not None and self.endpoints is not None:
            raise ValueError("set either url (one endpoint) or endpoints (a pool), not both")
        if self.url is None and self.endpoints is None:
            raise ValueError("missing endpoint: set url to one server's URL or endpoints to a list of URLs")
        return self

    @property
    def endpoint_urls(self) -> list[str]:
        """The URL of every endpoint, in file order."""
        if self.endpoints is not None:
            return list(self.endpoints)
        return [self.url] if self.url is not None else []

    @property
    def max_in_flight(self) -> int:
        """The maximum number of requests the pool sends at once, over all its endpoints."""
        return len(self.endpoint_urls) * self.max_in_flight_per_endpoint

    def for_endpoint(self, url: str) -> BackendConfig:
        """Return a copy of this config with `url` as its only endpoint: what one endpoint's client reads."""
        if url not in self.endpoint_urls:
            raise ValueError(f"{url} is not an endpoint of this backend; its endpoints are {self.endpoint_urls}")
        return self.model_copy(update={"url": url, "endpoints": None})


class VariantConfig(_Config):
    """One arm of an experiment, or the default variant.

    `weight` is the share of units in [0, 1]. It is omitted either for every
    variant of an experiment, which splits the units equally, or for none.
    `quantization` is a label such as "awq" or "int8" that telemetry and
    analysis carry. `prompt_template` contains `PROMPT_PLACEHOLDER` exactly
    once, and the inference service puts the last user message there.
    """

    key: str = Field(min_length=1)
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    backend: str = Field(min_length=1)
    model: str | None = None
    adapter_id: str | None = None
    quantization: str | None = Field(default=None, min_length=1)
    prompt_template: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)

    @field_validator("prompt_template")
    @classmethod
    def _check_prompt_template(cls, template: str | None) -> str | None:
        if template is not None and template.count(PROMPT_PLACEHOLDER) != 1:
            raise ValueError(
                f"prompt_template contains {PROMPT_PLACEHOLDER} {template.count(PROMPT_PLACEHOLDER)} times, "
                f"but it must contain it exactly once, where the user's message goes"
            )
        return template

    def to_spec(self) -> VariantSpec:
        return VariantSpec(
            key=self.key,
            backend=self.backend,
            model=self.model,
            adapter_id=self.adapter_id,
            quantization=self.quantization,
            prompt_template=self.prompt_template,
            params=self.params,
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
    """An A/B experiment, with GrowthBook's hashing, targeting and sticky bucketing parameters.

    `seed` defaults to `key`. `coverage` is the share of units in [0, 1] that
    enter the experiment. `condition` is a GrowthBook condition (MongoDB-like
    operators) on the attributes `tenant`, `route`, `user_id` and `metadata`.
    `forced_variants` maps a unit (a user_id) to the key of the variant it
    always gets, for testing. The experiment takes units from `start`
    (inclusive) until `stop` (exclusive); either may be omitted.
    `bucket_version` and `min_bucket_version` control sticky bucketing as in
    GrowthBook: bumping `bucket_version` re-hashes every unit, and a unit
    whose stored assignment is older than `min_bucket_version` is excluded.
    """

    key: str = Field(min_length=1)
    hash_attribute: Literal["user_id"] = "user_id"
    hash_version: Literal[1, 2] = 2
    seed: str | None = None
    coverage: float = Field(default=1.0, ge=0.0, le=1.0)
    namespace: Namespace | None = None
    condition: dict[str, Any] | None = None
    forced_variants: dict[str, str] = Field(default_factory=dict)
    start: datetime | None = None
    stop: datetime | None = None
    bucket_version: int = Field(default=0, ge=0)
    min_bucket_version: int = Field(default=0, ge=0)
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

    @field_validator("start", "stop")
    @classmethod
    def _check_time_zone(cls, moment: datetime | None) -> datetime | None:
        if moment is not None and moment.utcoffset() is None:
            raise ValueError(
                f"{moment.isoformat()} has no time zone, so the moment it names depends on the server: "
                "add one, such as 2025-06-01T00:00:00Z"
            )
        return moment

    @model_validator(mode="after")
    def _check_schedule(self) -> ExperimentConfig:
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError(
                f"stop {self.stop.isoformat()} must be after start {self.start.isoformat()}, "
                "or the experiment never takes a unit"
            )
        return self

    @model_validator(mode="after")
    def _check_forced_variants(self) -> ExperimentConfig:
        keys = [variant.key for variant in self.variants]
        for unit, variant_key in self.forced_variants.items():
            if variant_key not in keys:
                raise ValueError(
                    f"forced_variants maps unit {unit!r} to variant {variant_key!r}, which is not a variant "
                    f"of experiment {self.key!r}; its variants are {keys}"
                )
        return self

    @model_validator(mode="after")
    def _check_bucket_versions(self) -> ExperimentConfig:
        if self.min_bucket_version > self.bucket_version:
            raise ValueError(
                f"min_bucket_version {self.min_bucket_version} is above bucket_version {self.bucket_version}, "
                "which would exclude units assigned under the current version too: "
                "raise bucket_version with it"
            )
        return self

    def is_running(self, now: datetime) -> bool:
        """Return whether the experiment takes units at `now`, a timezone-aware time: start <= now < stop."""
        if self.start is not None and now < self.start:
            return False
        return self.stop is None or now < self.stop


class ExperimentsFile(_Config):
    """The contents of experiments.yaml. Experiments are tried in order, and the first that takes the unit wins."""

    experiments: list[ExperimentConfig] = Field(default_factory=list)
    default_variant: VariantConfig

    @field_validator("experiments")
    @classmethod
    def _check_experiment_keys(cls, experiments: list[ExperimentConfig]) -> list[ExperimentConfig]:
        _check_unique([experiment.key for experiment in experiments], "experiment key")
        return experiments

    @model_validator(mode="after")
    def _check_model_names(self) -> ExperimentsFile:
        """Keep every key usable as an OpenAI `model` name: none is `auto`, and no variant hides an experiment."""
        experiment_keys = {experiment.key for experiment in self.experiments}
        variant_keys = {variant.key for experiment in self.experiments for variant in experiment.variants}
        if AUTO_MODEL in experiment_keys | variant_keys | {self.default_variant.key}:
            raise ValueError(f"the key {AUTO_MODEL!r} is reserved for the usual routing of the OpenAI API: rename it")
        clashes = sorted(variant_keys & experiment_keys)
        if clashes:
            raise ValueError(
                f"variant key {clashes[0]!r} is also an experiment key, so the model name would be ambiguous: rename one"
            )
        if self.default_variant.key in variant_keys | experiment_keys:
            raise ValueError(
                f"default_variant key {self.default_variant.key!r} is also the key of an experiment or of one of its "
                "variants, so the model name would be ambiguous: rename one"
            )
        return self

    def variants(self) -> list[VariantConfig]:
        """Return every variant, the default one included."""
        return [variant for experiment in self.experiments for variant in experiment.variants] + [self.default_variant]


@dataclass(frozen=True)
class ModelChoice:
    """The selection a request's `model` name makes.

    It is one experiment, one variant, or the usual routing when both are None.
    """

    experiment_key: str | None = None
    variant: VariantConfig | None = None


def find_model(experiments: ExperimentsFile, name: str | None) -> ModelChoice | None:
    """Return what the model `name` selects, or None when `name` is unknown.

    An experiment key selects that experiment, and a variant key selects that
    variant. None and `AUTO_MODEL` select the usual routing. Experiment keys
    are matched first, then variant keys in file order with the default
    variant last, so a variant key that several experiments share selects
    the first of them.
    """
    if name is None:
        return ModelChoice()
    for experiment in experiments.experiments:
        if experiment.key == name:
            return ModelChoice(experiment_key=name)
    for variant in experiments.variants():
        if variant.key == name:
            return ModelChoice(variant=variant)
    if name == AUTO_MODEL:
        return ModelChoice()
    return None


def model_names(experiments: ExperimentsFile) -> list[str]:
    """Return each name that `find_model` accepts once: `AUTO_MODEL`, the experiment keys, then the variant keys."""
    names = [AUTO_MODEL]
    names += [experiment.key for experiment in experiments.experiments]
    names += [variant.key for variant in experiments.variants()]
    return list(dict.fromkeys(names))


class BackendsFile(_Config):
    """The contents of backends.yaml: backend name to backend.

    A backend name becomes a token of its pool's NATS subjects, so it is
    limited to letters, digits, '_' and '-'.
    """

    backends: dict[Annotated[str, Field(pattern=SUBJECT_TOKEN_PATTERN)], BackendConfig] = Field(min_length=1)


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


def expand_variables(value: Any, variables: Mapping[str, str], path: Path | str, key_path: str = "") -> Any:
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


def _lookup(name: str, variables: Mapping[str, str], path: Path | str, key_path: str) -> str:
    if name not in variables:
        raise ConfigError(
            f"{path}: {key_path} refers to environment variable {name}, which is not set. Set it or edit the file"
        )
    return variables[name]


def _join(key_path: str, key: object) -> str:
    return f"{key_path}.{key}" if key_path else str(key)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found. Create it or point the setting at another file") from error
    return _parse_yaml(text, path)


def _parse_yaml(text: str, source: Path | str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from error


def _validate(model: type[_Config], data: Any, path: Path | str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, path)) from error


def _describe(error: ValidationError, path: Path | str) -> str:
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


def parse_experiments(text: str, source: str, variables: Mapping[str, str]) -> ExperimentsFile:
    """Validate the YAML text of an experiments file; `source` names it in errors. Raises `ConfigError`."""
    data = expand_variables(_parse_yaml(text, source), variables, source)
    return _validate(ExperimentsFile, data, source)


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
    check_variant_backends(experiments, settings.experiments_file, backends, settings.backends_file)
    return ServingConfig(experiments=experiments, backends=backends)


def check_variant_backends(
    experiments: ExperimentsFile, source: Path | str, backends: Mapping[str, BackendConfig], backends_file: Path
) -> None:
    """Raise `ConfigError` when a variant names a backend that `backends_file` does not define."""
    for variant in experiments.variants():
        if variant.backend not in backends:
            raise ConfigError(
                f"{source}: variant {variant.key!r} names backend {variant.backend!r}, "
                f"which {backends_file} does not define; defined backends: {sorted(backends)}"
            )
