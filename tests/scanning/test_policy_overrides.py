"""Policy overrides per tenant and route, storage modes, and errors that name the line."""

from __future__ import annotations

import pytest

from shared.scanning import PolicyError, build_input_chains, parse_policy_text

OVERRIDES = """\
input:
  - type: PII
storage:
  prompt: redacted
routes:
  /v1/chat/completions:
    input:
      - type: PII
        name: ChatPII
    storage: {output: hashed}
tenants:
  acme:
    storage: {prompt: none}
    routes:
      /v1/requests:
        input:
          - type: TokenLimit
  globex:
    input:
      - type: InvisibleText
"""


def _error(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(text, source="policy.yaml")
    return str(caught.value)


def test_unknown_scanner_names_line() -> None:
    message = _error("input:\n  - type: Secrets\n  - type: Telepathy\n")

    assert "line 3: input[1]" in message
    assert "'Telepathy'" in message


def test_bad_threshold_names_line() -> None:
    message = _error("input:\n  - type: TokenLimit\n    options:\n      limit: -5\n")

    assert "line 4: input[0].options.limit" in message
    assert "greater than 0" in message


def test_unknown_tenant_field_names_line() -> None:
    message = _error("tenants:\n  acme:\n    storage: {prompt: raw}\n    scanners: []\n")

    assert "line 4: tenants.acme.scanners" in message
    assert "allowed keys: input, output, routes, storage" in message


def test_unknown_route_names_line() -> None:
    message = _error("routes:\n  /v1/requests: {}\n  /v2/other: {}\n")

    assert "line 3: routes./v2/other" in message


def test_bad_storage_mode_names_line() -> None:
    message = _error("storage:\n  prompt: encrypted\n")

    assert "line 2: storage.prompt" in message


def test_bad_entity_action_names_line() -> None:
    message = _error("input:\n  - type: PII\n    options:\n      entities: {EMAIL: hide}\n")

    assert "line 4: input[0].options.entities.EMAIL" in message


def test_storage_resolves_most_specific() -> None:
    policy = parse_policy_text(OVERRIDES, source="policy.yaml")

    assert policy.resolve(None, None).storage.model_dump() == {"prompt": "redacted", "output": "redacted"}
    assert policy.resolve(None, "/v1/chat/completions").storage.output == "hashed"
    assert policy.resolve("acme", "/v1/chat/completions").storage.model_dump() == {"prompt": "none", "output": "hashed"}
    assert policy.resolve("initech", "/v1/requests").storage.prompt == "redacted"


def test_overrides_pick_chain() -> None:
    chains = build_input_chains(parse_policy_text(OVERRIDES, source="policy.yaml"))

    assert chains.default.names == ("PII",)
    assert chains.for_request("initech", "/v1/requests").names == ("PII",)
    assert chains.for_request("initech", "/v1/chat/completions").names == ("ChatPII",)
    assert chains.for_request("acme", "/v1/requests").names == ("TokenLimit",)
    assert chains.for_request("acme", "/v1/chat/completions").names == ("ChatPII",)
    assert chains.for_request("globex", "/v1/chat/completions").names == ("InvisibleText",)
    assert chains.for_request("globex", None).names == ("InvisibleText",)


def test_same_scanner_list_shares_chain() -> None:
    chains = build_input_chains(parse_policy_text(OVERRIDES, source="policy.yaml"))

    assert chains.for_request("acme", "/v1/completions") is chains.default


def test_output_secrets_flag_names_line() -> None:
    message = _error("output:\n  - type: Secrets\n    action: flag\n")

    assert "line 3: output[0].action" in message
    assert "use 'redact' or 'block'" in message


def test_output_secrets_option_names_line() -> None:
    message = _error("tenants:\n  acme:\n    output:\n      - type: Secrets\n        options: {redact_mode: partial}\n")

    assert "line 5: tenants.acme.output[0].options.redact_mode" in message
    assert "this entry takes no options" in message
