from __future__ import annotations

import pytest

from services.model_server.errors import RequestValidationFailed
from services.model_server.tgi_schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerateParameters,
    to_sampling_params,
    truncate_inputs,
    wants_sampling,
)


def _params(**fields) -> GenerateParameters:
    return GenerateParameters(**fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"do_sample": True}, True),
        ({"temperature": 0.7}, True),
        ({"top_p": 0.9}, True),
        ({"temperature": 1.0}, False),
        ({"temperature": 0.0}, False),
        ({"temperature": 0.0, "top_p": 0.9}, False),
        ({"do_sample": False, "temperature": 0.7}, False),
    ],
)
def test_wants_sampling_rules(fields, expected) -> None:
    assert wants_sampling(_params(**fields)) is expected


def test_defaults_give_greedy_hundred_tokens(engine) -> None:
    params = to_sampling_params(_params(), engine.limits)

    assert params.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert params.do_sample is False
    assert params.stop == ()


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"typical_p": 1.0}, "typical_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"seed": -1}, "seed"),
        ({"top_n_tokens": 6}, "top_n_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"best_of": 2}, "best_of"),
        ({"watermark": True}, "watermark"),
        ({"grammar": {"type": "json", "value": {}}}, "grammar"),
    ],
)
def test_invalid_parameter_named(engine, fields, field_name) -> None:
    with pytest.raises(RequestValidationFailed, match=f"`{field_name}`") as raised:
        to_sampling_params(_params(**fields), engine.limits)

    assert raised.value.status_code == 422
    assert raised.value.error_type == "validation"


def test_truncate_keeps_last_tokens(engine) -> None:
    assert truncate_inputs([1, 2, 3, 4], _params(truncate=2), engine.limits) == [3, 4]


def test_truncate_above_limit_rejected(engine) -> None:
    with pytest.raises(RequestValidationFailed, match="`truncate`"):
        truncate_inputs([1, 2], _params(truncate=engine.limits.max_input_tokens + 1), engine.limits)
