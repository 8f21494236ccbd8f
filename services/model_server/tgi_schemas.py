"""TGI's `/generate` request body, its conversion to sampling parameters, and its response bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from services.model_server.engine import Generation, GeneratedToken, ServingLimits, TokenInfo
from services.model_server.sampling import SamplingParams
from services.model_server.validation import (
    check_penalty,
    check_positive,
    check_probability,
    check_stop,
    validation_error,
    reject_if_set,
)

# TGI's default for `max_new_tokens` on /generate, which keeps an unbounded
# request from holding a generation slot for the whole context.
DEFAULT_MAX_NEW_TOKENS = 100


class GenerateParameters(BaseModel):
    """TGI's `GenerateParameters`; unknown fields are rejected so that a misspelt one is not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = True
    do_sample: bool | None = None
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = []
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(BaseModel):
    """The body of `POST /generate` and `POST /generate_stream`."""

    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: GenerateParameters = GenerateParameters()


class CompatGenerateRequest(GenerateRequest):
    """The body of `POST /`, where `stream` chooses between the two replies."""

    stream: bool = False


def wants_sampling(p: GenerateParameters) -> bool:
    """Decide greedy or sampling: an explicit `do_sample` wins, then temperature 0 means greedy, then any warper means sampling.

    The last rule is TGI's: setting temperature, top_k, top_p or typical_p
    without `do_sample` samples.
    """
    if p.do_sample is not None:
        return p.do_sample
    if p.temperature == 0:
        return False
    return (p.temperature not in (None, 1.0)) or any(v is not None for v in (p.top_k, p.top_p, p.typical_p))


def to_sampling_params(p: GenerateParameters, limits: ServingLimits) -> SamplingParams:
    """Validate `p` and return the sampling parameters; raise `RequestValidationFailed` naming the first bad field."""
    _reject_unsupported(p)
    do_sample = wants_sampling(p)
    _check_temperature(p.temperature, do_sample)
    _check_ranges(p, limits)
    return SamplingParams(
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS if p.max_new_tokens is None else p.max_new_tokens,
        do_sample=do_sample,
        temperature=p.temperature or 1.0,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
        stop=check_stop(p.stop, limits),
        top_n_tokens=p.top_n_tokens or 0,
        decoder_input_details=p.decoder_input_details,
    )


def truncate_inputs(input_ids: list[int], p: GenerateParameters, limits: ServingLimits) -> list[int]:
    """Keep the last `p.truncate` tokens of the prompt, as TGI does, when `truncate` is set."""
    if p.truncate is None:
        return input_ids
    if not 0 < p.truncate <= limits.max_input_tokens:
        raise validation_error(f"`truncate` must be strictly positive and at most {limits.max_input_tokens}. Given: {p.truncate}")
    return input_ids[-p.truncate :]


def _reject_unsupported(p: GenerateParameters) -> None:
    reject_if_set("grammar", p.grammar, "constrained decoding is not implemented")
    reject_if_set("watermark", p.watermark, "watermarking is not implemented")
    if p.best_of not in (None, 1):
        raise validation_error(f"`best_of` must be 1 on this server, which generates one sequence per request. Given: {p.best_of}")


def _check_temperature(temperature: float | None, do_sample: bool) -> None:
    if temperature is not None and temperature < 0:
        raise validation_error(f"`temperature` must be >= 0. Given: {temperature}")
    if do_sample and temperature == 0:
        raise validation_error("`temperature` must be strictly positive when sampling; send do_sample false for greedy decoding")


def _check_ranges(p: GenerateParameters, limits: ServingLimits) -> None:
    check_positive("max_new_tokens", p.max_new_tokens)
    check_positive("top_k", p.top_k)
    check_positive("repetition_penalty", p.repetition_penalty)
    check_probability("top_p", p.top_p, allow_one=True)
    check_probability("typical_p", p.typical_p, allow_one=False)
    check_penalty("frequency_penalty", p.frequency_penalty)
    if p.seed is not None and p.seed < 0:
        raise validation_error(f"`seed` must be >= 0. Given: {p.seed}")
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= limits.max_top_n_tokens:
        raise validation_error(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p.top_n_tokens}")


def token_body(token: TokenInfo) -> dict[str, Any]:
    """Return TGI's `Token` object."""
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def details_body(generation: Generation, tokens: list[GeneratedToken]) -> dict[str, Any]:
    """Return TGI's `Details` object for a finished, non-streamed generation."""
    body: dict[str, Any] = {
        "finish_reason": generation.finish_reason,
        "generated_tokens": generation.generated_tokens,
        "seed": generation.seed,
        "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in generation.prefill],
        "tokens": [token_body(t) for t in tokens],
    }
    if generation.params.top_n_tokens:
        body["top_tokens"] = [[token_body(top) for top in t.top_tokens] for t in tokens]
    return body


def stream_details_body(generation: Generation) -> dict[str, Any]:
    """Return TGI's `StreamDetails` object, sent with the last token of a stream."""
    return {
        "finish_reason": generation.finish_reason,
        "generated_tokens": generation.generated_tokens,
        "input_length": len(generation.input_ids),
        "seed": generation.seed,
    }
