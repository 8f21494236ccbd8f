"""The configuration bucket: the experiments and the screening policy that every replica watches.

The NATS JetStream key-value bucket `sluice_config` has two keys, `experiments`
and `policy`. Each value is the YAML text of the file it replaces, stored as
written rather than as parsed JSON. So comments survive, `sluice config show`
prints what the operator wrote, and each service expands `${NAME}` references
from its own environment, as it does for the files.

A service seeds its key from its configured file when the key is absent, so
the first start on an empty NATS works and the files ship the defaults. After
that the bucket wins: editing the file changes nothing until the key is
deleted or set with `sluice config set`. Each value is validated with the
same models and cross-checks as the files. An invalid value is logged as
`runtime_config_invalid` and the previous valid value stays in force.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.experiments import ExperimentsFile, check_variant_backends, config_variables, load_backends, parse_experiments
from shared.runtime_config import Parser, RuntimeConfigError, WatchedValue, ensure_bucket, seed_key_from_file
from shared.scanning import Policy, PolicyError, parse_policy_text
from shared.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

CONFIG_BUCKET = "sluice_config"
EXPERIMENTS_KEY = "experiments"
POLICY_KEY = "policy"
CONFIG_KEYS = (EXPERIMENTS_KEY, POLICY_KEY)

_BUCKET_DESCRIPTION = "Sluice runtime configuration: the YAML text of experiments.yaml and policy.yaml"


class InvalidConfigValue(ValueError):
    """A configuration value failed validation; the message names its source and each problem."""


async def open_config_bucket(js: JetStreamContext) -> KeyValue:
    """Open the configuration bucket, creating it on first use; raises `RuntimeConfigError`."""
    return await ensure_bucket(js, CONFIG_BUCKET, _BUCKET_DESCRIPTION)


def value_source(key: str) -> str:
    """Return the name that error messages give a value of `key`, such as `sluice_config/policy`."""
    return f"{CONFIG_BUCKET}/{key}"


def experiments_validator(settings: Settings) -> Callable[[str, str], ExperimentsFile]:
    """Return a function that validates experiments YAML text, as `load_serving_config` validates the file.

    The function takes the text and the source that its errors name, and
    checks every variant's backend against `settings.backends_file`. That
    file is read once, now. Raises `shared.experiments.ConfigError` when
    backends.yaml is invalid, and the function raises it for invalid text.
    """
    variables = config_variables(settings)
    backends = load_backends(settings.backends_file, variables)

    def validate(text: str, source: str) -> ExperimentsFile:
        experiments = parse_experiments(text, source, variables)
        check_variant_backends(experiments, source, backends, settings.backends_file)
        return experiments

    return validate


def experiments_parser(settings: Settings) -> Parser[ExperimentsFile]:
    """Return the parser of the `experiments` value; see `experiments_validator` for what it checks."""
    validate = experiments_validator(settings)
    return lambda key, data: validate(data.decode("utf-8"), value_source(key))


def validate_policy(text: str, source: str, build: Callable[[Policy], T]) -> T:
    """Validate policy YAML text and return `build(policy)`, which builds its scanners.

    Raises `InvalidConfigValue` when the text does not fit the schema or a
    scanner cannot be built, with `source` named in the message.
    """
    try:
        return build(parse_policy_text(text, source=source))
    except PolicyError as error:
        raise InvalidConfigValue(str(error)) from error


def policy_parser(build: Callable[[Policy], T]) -> Parser[T]:
    """Return the parser of the `policy` value: it validates the text and returns `build(policy)`."""
    return lambda key, data: validate_policy(data.decode("utf-8"), value_source(key), build)


class WatchedConfig(Generic[T]):
    """One key of the configuration bucket, seeded from a file and then watched.

    It has a puller's `start(jetstream)` and `stop()`, so a service passes it
    to `shared.service.build_app` ahead of its message puller. `current`
    returns the last valid value. Read it once per request and keep it, so
    that a request in flight finishes with the value it started with.
    """

    def __init__(self, key: str, seed_file: Path, parse: Parser[T], *, parse_in_thread: bool = False) -> None:
        self._key = key
        self._seed_file = seed_file
        self._parse = parse
        self._parse_in_thread = parse_in_thread
        self._value: WatchedValue[T] | None = None

    async def start(self, jetstream: JetStreamContext) -> None:
        """Seed the key when it is absent, then load its value and keep watching.

        Raises `RuntimeConfigError` when the bucket cannot be read or the key
        has no valid value, and the parser's `ValueError` (or `OSError`) when
        the seed file is invalid.
        """
        kv = await open_config_bucket(jetstream)
        seeded = await seed_key_from_file(kv, self._key, self._seed_file, self._parse)
        value = WatchedValue(kv, self._key, self._parse, parse_in_thread=self._parse_in_thread)
        await value.start()
        try:
            # An invalid stored value fails the start here rather than every message later.
            _ = value.current
        except RuntimeConfigError:
            await value.stop()
            raise
        self._value = value
        log.info("runtime_config_loaded", bucket=CONFIG_BUCKET, key=self._key, seeded_from_file=seeded)

    async def stop(self) -> None:
        """Stop watching; `current` keeps returning the last valid value."""
        if self._value is not None:
            await self._value.stop()

    @property
    def current(self) -> T:
        """The last valid value; raises `RuntimeConfigError` before `start`."""
        if self._value is None:
            raise RuntimeConfigError(f"{value_source(self._key)} is not loaded yet: start the watch first")
        return self._value.current
