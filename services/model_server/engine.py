"""The generation engine: token limits, a bounded number of concurrent generations, and per-token results."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import structlog
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.model_server.adapters import BASE_ADAPTER
from services.model_server.decoder import AdapterSelection, StepResult, TokenDecoder
from services.model_server.errors import GenerationFailed, RequestValidationFailed
from services.model_server.sampling import SamplingParams, build_processors
from services.model_server.text_tracking import IncrementalDecoder, find_stop
from shared.modeling import supports_inference_mode

log = structlog.get_logger(__name__)

FinishReason = Literal["length", "eos_token", "stop_sequence"]

# TGI's defaults for the launcher flags of the same names.
DEFAULT_MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOP_N_TOKENS = 5
# Seeds drawn for sampling requests without one stay in int64, the type of TGI's `seed`.
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ServingLimits:
    """Token limits and concurrency, reported by `GET /info` and enforced on every request."""

    max_input_tokens: int
    max_total_tokens: int
    max_concurrent_generations: int
    max_stop_sequences: int = DEFAULT_MAX_STOP_SEQUENCES
    max_top_n_tokens: int = DEFAULT_MAX_TOP_N_TOKENS


@dataclass(frozen=True)
class TokenInfo:
    """One token as TGI reports it; `text` is "" while a multi-byte character is incomplete."""

    id: int
    text: str
    logprob: float | None
    special: bool


@dataclass(frozen=True)
class GeneratedToken(TokenInfo):
    """A generated token with the most likely alternatives at its position (empty unless requested)."""

    top_tokens: list[TokenInfo] = field(default_factory=list)


@dataclass
class GenerationCounters:
    """Totals since the server started, exported at `/metrics`.

    A generation is `stopped` when its consumer closed it before it finished,
    which is what a client that disconnects or cancels causes.
    """

    started: int = 0
    finished: int = 0
    stopped: int = 0
    failed: int = 0
    generated_tokens: int = 0

    def record_end(self, *, finished: bool, failed: bool) -> None:
        if failed:
            self.failed += 1
        elif finished:
            self.finished += 1
        else:
            self.stopped += 1


class GenerationEngine:
    """Run generations of one causal LM on the CPU, at most `limits.max_concurrent_generations` at a time.

    Further generations wait, in arrival order, for a free slot. The model
    and tokenizer are shared, read-only, by every generation.

    NOTE: the wait is unbounded. TGI instead rejects requests beyond
    `max_concurrent_requests` with HTTP 429, so a TGI client's backoff never triggers here.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        limits: ServingLimits,
        adapters: frozenset[str] = frozenset(),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.limits = limits
        # The LoRA adapter ids served over the model (a peft model then); empty serves the base model alone.
        self.adapters = adapters
        # peft selects a forward pass's adapter with hooks on the shared
        # modules, so with adapters two forward passes must not overlap.
        self.forward_lock = threading.Lock() if adapters else None
        self._slots = asyncio.Semaphore(limits.max_concurrent_generations)
        self.counters = GenerationCounters()
        self.eos_ids = _eos_ids(model, tokenizer)
        # Forward passes run under torch.inference_mode unless the model's int4 weights fail there.
        self.inference_mode = supports_inference_mode(model)
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def encode(self, text: str) -> list[int]:
        """Return the token ids of `text`, with whatever special tokens the tokenizer adds by default."""
        return self.tokenizer(text)["input_ids"]

    def token_info(self, token_id: int, logprob: float | None) -> TokenInfo:
        """Describe `token_id` with its own text, as a lone token decodes."""
        text = self.tokenizer.decode([token_id])
        return TokenInfo(token_id, text, logprob, token_id in self.special_ids)

    def check_lengths(self, input_length: int, max_new_tokens: int) -> None:
        """Raise `RequestValidationFailed` unless the prompt and the requested tokens fit the limits."""
        if input_length == 0:
            raise RequestValidationFailed("Input validation error: `inputs` cannot be empty; send at least one token of text")
        if input_length > self.limits.max_input_tokens:
            raise RequestValidationFailed(
                f"Input validation error: `inputs` must have less than {self.limits.max_input_tokens + 1} tokens. "
                f"Given: {input_length}. Shorten the prompt"
            )
        if input_length + max_new_tokens > self.limits.max_total_tokens:
            raise RequestValidationFailed(
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {self.limits.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`. "
                "Lower max_new_tokens or shorten the prompt"
            )

    def generate(self, input_ids: list[int], params: SamplingParams, adapter: str | None = None) -> Generation:
        """Return a generation of `params.max_new_tokens` at most; nothing runs until it is iterated.

        `adapter` is one of `adapters`, or None for the base model. The caller
        checks lengths first with `check_lengths` and the adapter with
        `services.model_server.validation.resolve_adapter`.
        """
        return Generation(self, input_ids, params, adapter)

    async def _acquire(self) -> None:
        await self._slots.acquire()

    def _release(self) -> None:
        self._slots.release()


class Generation:
    """The tokens of one request, produced while it is iterated, and its outcome once iteration ends.

    Iterate it once. `finished` turns true as the last token is yielded, and
    from then on `finish_reason`, `text` (special tokens skipped) and
    `stop_index` are final. `stop_index` is where a stop sequence begins in
    `text`, or None. Breaking out of the loop stops generation and frees the
    slot. Iteration raises `GenerationFailed` when the model raises.
    """

    def __init__(
        self, engine: GenerationEngine, input_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> None:
        self._engine = engine
        self.input_ids = input_ids
        self.params = params
        self.adapter = adapter
        self.seed = _resolve_seed(params)
        self.finish_reason: FinishReason = "length"
        self.finished = False
        self.generated_tokens = 0
        self.text = ""
        self.stop_index: int | None = None
        self.prefill: list[TokenInfo] = []

    async def __aiter__(self) -> AsyncIterator[GeneratedToken]:
        await self._engine._acquire()
        started = time.perf_counter()
        counters = self._engine.counters
        counters.started += 1
        failed = False
        try:
            async for token in self._run():
                yield token
        except GenerationFailed:
            failed = True
            raise
        finally:
            self._engine._release()
            counters.record_end(finished=self.finished, failed=failed)
            self._log_end(started)

    async def _run(self) -> AsyncIterator[GeneratedToken]:
        decoder = self._make_decoder()
        text = IncrementalDecoder(self._engine.tokenizer)
        for index in range(self.params.max_new_tokens):
            step = await self._step(decoder)
            if index == 0:
                self.prefill = self._prefill_tokens(decoder.prefill_logprobs)
            yield self._accept(step, text, last=index == self.params.max_new_tokens - 1)
            if self.finished:
                return

    def _make_decoder(self) -> TokenDecoder:
        params = self.params
        processors = build_processors(params, len(self.input_ids))
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        engine = self._engine
        selection = None
        if engine.forward_lock is not None:
            selection = AdapterSelection(self.adapter or BASE_ADAPTER, engine.forward_lock)
        return TokenDecoder(
            engine.model, self.input_ids, processors, generator, params.top_n_tokens, params.decoder_input_details,
            selection, engine.inference_mode,
        )

    async def _step(self, decoder: TokenDecoder) -> StepResult:
        try:
            return await asyncio.to_thread(decoder.step)
        except (RuntimeError, ValueError, IndexError) as error:
            log.warning("generation_failed", input_tokens=len(self.input_ids), error=repr(error))
            raise GenerationFailed(f"the model failed while generating token {self.generated_tokens + 1}: {error}") from error

    def _accept(self, step: StepResult, text: IncrementalDecoder, *, last: bool) -> GeneratedToken:
        self.generated_tokens += 1
        self._engine.counters.generated_tokens += 1
        is_eos = step.token_id in self._engine.eos_ids
        searched_from = len(text.text)
        piece = text.push(step.token_id, final=last or is_eos)
        self.text = text.text
        if is_eos:
            self.finish_reason = "eos_token"
        elif (stop_index := find_stop(self.text, self.params.stop, searched_from)) is not None:
            self.finish_reason = "stop_sequence"
            self.stop_index = stop_index
        self.finished = last or self.finish_reason != "length"
        return self._token(step, piece)

    def _token(self, step: StepResult, piece: str) -> GeneratedToken:
        engine = self._engine
        special = step.token_id in engine.special_ids
        top = [engine.token_info(token_id, logprob) for token_id, logprob in step.top]
        text = engine.tokenizer.decode([step.token_id]) if special else piece
        return GeneratedToken(step.token_id, text, step.logprob, special, top)

    def _prefill_tokens(self, logprobs: list[float]) -> list[TokenInfo]:
        if not self.params.decoder_input_details:
            return []
        first, rest = self.input_ids[0], self.input_ids[1:]
        infos = [self._engine.token_info(first, None)]
        return infos + [self._engine.token_info(token_id, lp) for token_id, lp in zip(rest, logprobs, strict=True)]

    def _log_end(self, started: float) -> None:
        # A generation that ends unfinished was cancelled by its consumer or failed.
        log.info(
            "generation_finished" if self.finished else "generation_stopped",
            input_tokens=len(self.input_ids),
            generated_tokens=self.generated_tokens,
            finish_reason=self.finish_reason,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _resolve_seed(params: SamplingParams) -> int | None:
    if not params.do_sample:
        return None
    if params.seed is not None:
        return params.seed
    return random.SystemRandom().randint(0, _MAX_SEED)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    # generation_config may list several end tokens (chat models often do).
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return frozenset(i for i in [*ids, tokenizer.eos_token_id] if i is not None)
