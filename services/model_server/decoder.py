"""One request's token-by-token forward passes with a KV cache; runs in a worker thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel


@dataclass(frozen=True)
class AdapterSelection:
    """The LoRA adapter a decoder's forward passes use, and the lock that keeps them from overlapping others'."""

    adapter: str
    lock: threading.Lock


@dataclass(frozen=True)
class StepResult:
    """The chosen token, its log-probability and the most likely alternatives as (id, logprob) pairs."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class TokenDecoder:
    """Generate one token per `step()` call, continuing from the prompt and every token chosen so far.

    Not thread-safe: call `step()` from one thread at a time (the engine awaits
    each step before starting the next). Log-probabilities come from the
    distribution after penalties and warpers, as TGI reports them.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        input_ids: list[int],
        processors: LogitsProcessorList,
        generator: torch.Generator | None,
        top_n_tokens: int,
        prefill_details: bool,
        adapter: AdapterSelection | None = None,
        inference_mode: bool = True,
    ) -> None:
        self._model = model
        # False for models that fail under torch.inference_mode; see shared.modeling.supports_inference_mode.
        self._inference_mode = inference_mode
        self._adapter = adapter
        self._ids = torch.tensor([input_ids], dtype=torch.long)
        self._processors = processors
        self._generator = generator
        self._top_n_tokens = top_n_tokens
        self._prefill_details = prefill_details
        self._cache = None
        self.prefill_logprobs: list[float] = []

    def step(self) -> StepResult:
        """Run one forward pass and return the next token.

        With `prefill_details`, the first call also fills `prefill_logprobs`
        with the log-probability of each prompt token after the first.
        """
        with torch.no_grad(), torch.inference_mode(self._inference_mode):
            logits = self._forward()
            scores = self._processors(self._ids, logits)
            logprobs = torch.log_softmax(scores, dim=-1)
            token_id = self._choose(logprobs)
            self._ids = torch.cat([self._ids, torch.tensor([[token_id]])], dim=1)
            return StepResult(token_id, logprobs[0, token_id].item(), self._top(logprobs))

    def _forward(self) -> torch.Tensor:
        if self._cache is None:
            output = self._call_model(input_ids=self._ids, use_cache=True)
            if self._prefill_details:
                self.prefill_logprobs = _prompt_logprobs(output.logits[0].float(), self._ids[0])
        else:
            output = self._call_model(input_ids=self._ids[:, -1:], past_key_values=self._cache, use_cache=True)
        self._cache = output.past_key_values
        return output.logits[:, -1, :].float()

    def _call_model(self, **inputs: Any) -> Any:
        if self._adapter is None:
            return self._model(**inputs)
        with self._adapter.lock:
            return self._model(**inputs, adapter_names=[self._adapter.adapter])

    def _choose(self, logprobs: torch.Tensor) -> int:
        if self._generator is None:
            return int(logprobs.argmax(dim=-1).item())
        return int(torch.multinomial(logprobs.exp(), 1, generator=self._generator).item())

    def _top(self, logprobs: torch.Tensor) -> list[tuple[int, float]]:
        if self._top_n_tokens == 0:
            return []
        values, ids = logprobs[0].topk(self._top_n_tokens)
        return list(zip(ids.tolist(), values.tolist(), strict=True))


def _prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> list[float]:
    # Position i predicts token i + 1, so the first prompt token has no logprob.
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return logprobs.gather(1, ids[1:].unsqueeze(1)).squeeze(1).tolist()
