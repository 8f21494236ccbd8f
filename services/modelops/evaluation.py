"""Scoring a model version on a held-out set: perplexity, task accuracy, output flag rates, latency and throughput.

For each example the model
- scores the reference completion given the prompt: the negative
  log-likelihood of each completion token, summed over the set, gives the
  perplexity exp(total NLL / completion tokens);
- generates greedily, at most `max_new_tokens` tokens, timed per generation;
- has its output checked by the set's task metric and scanned by the
  policy's output chain, built as moderation builds it.

Prompt and completion are tokenized apart and joined, as fine-tuning does
(`services.modelops.finetune_data`), because generation also starts from
the prompt alone. The tokenizer's special tokens (BOS) come before the
prompt only. Fine-tuning appends EOS to the completion, but perplexity here
leaves it out, so a base model and its tuned variants are scored on the
same tokens. A prompt too long for the context keeps its last tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from services.modelops.evaluated_model import EvaluatedModel
from services.modelops.heldout import METRICS, HeldOutExample, HeldOutSet
from shared.events import LatencyPercentiles, ModelEvaluatedPayload
from shared.scanning import ChainResult, ScannerChain

@dataclass(frozen=True)
class ExampleResult:
    """One example's completion NLL, generated output, task check and output scanner verdict."""

    nll_sum: float
    completion_tokens: int
    output: str
    generated_tokens: int
    generation_ms: float
    correct: bool
    verdict: ChainResult


def evaluate(
    evaluated: EvaluatedModel,
    heldout: HeldOutSet,
    output_chain: ScannerChain,
    *,
    model_version: str,
    max_new_tokens: int,
    seed: int,
    on_example: Callable[[ExampleResult], None] = lambda _result: None,
) -> ModelEvaluatedPayload:
    """Score every example of `heldout` and return the run's figures as a `model.evaluated` payload.

    Raises `ValueError` when `max_new_tokens` leaves no room for a prompt in
    the model's context, and `shared.scanning.ScannerFailed` when a scanner raises.
    """
    context_tokens = int(evaluated.model.config.max_position_embeddings)
    if not 1 <= max_new_tokens < context_tokens:
        raise ValueError(f"max_new_tokens is {max_new_tokens}; use 1 to {context_tokens - 1}, below the model's context")
    torch.manual_seed(seed)
    check = METRICS[heldout.metric]
    results = []
    for example in heldout.examples:
        result = evaluate_example(evaluated, example, output_chain, check, max_new_tokens)
        results.append(result)
        on_example(result)
    return summarize(results, evaluated, heldout, output_chain, model_version=model_version, max_new_tokens=max_new_tokens, seed=seed)


def evaluate_example(
    evaluated: EvaluatedModel,
    example: HeldOutExample,
    output_chain: ScannerChain,
    check: Callable[[str, str], bool],
    max_new_tokens: int,
) -> ExampleResult:
    """Score, generate, check and scan one example."""
    prompt_ids, completion_ids = encode_pair(evaluated, example)
    context_tokens = int(evaluated.model.config.max_position_embeddings)
    nll_sum, completion_tokens = completion_nll(evaluated.model, prompt_ids, completion_ids, context_tokens)

    generation_prompt = prompt_ids[-(context_tokens - max_new_tokens) :]
    output, generated_tokens, generation_ms = generate(evaluated, generation_prompt, max_new_tokens)
    return ExampleResult(
        nll_sum=nll_sum,
        completion_tokens=completion_tokens,
        output=output,
        generated_tokens=generated_tokens,
        generation_ms=generation_ms,
        correct=check(output, example.completion),
        verdict=output_chain.scan(output),
    )


def encode_pair(evaluated: EvaluatedModel, example: HeldOutExample) -> tuple[list[int], list[int]]:
    """Return the prompt's token ids, with the tokenizer's special tokens, and the completion's, without.

    An empty prompt of a tokenizer that adds no BOS becomes the BOS (else
    EOS) token alone, because the first completion token needs a token to follow.
    """
    tokenizer = evaluated.tokenizer
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    if not prompt_ids:
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt_ids = [start_id]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    return prompt_ids, completion_ids


# no_grad, not inference_mode: optimum-quanto's int4 weights raise "Cannot set
# version_counter for inference tensor" under inference_mode.
@torch.no_grad()
def completion_nll(model: torch.nn.Module, prompt_ids: list[int], completion_ids: list[int], context_tokens: int) -> tuple[float, int]:
    """Return the summed negative log-likelihood (nats) of `completion_ids` given `prompt_ids`, and their count.

    When both do not fit in `context_tokens`, the prompt loses its first
    tokens. A completion longer than the context minus one token is cut to
    fit, because its first token needs one token of context.
    """
    completion = completion_ids[: context_tokens - 1]
    prompt = prompt_ids[-(context_tokens - len(completion)) :]
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    token_nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return float(token_nll[len(prompt) - 1 :].sum()), len(completion)


@torch.no_grad()
def generate(evaluated: EvaluatedModel, prompt_ids: list[int], max_new_tokens: int) -> tuple[str, int, float]:
    """Decode greedily after `prompt_ids`; return the new text (special tokens left out), its token count and the time in ms.

    Generation stops early at the model's EOS token.
    """
    ids = torch.tensor([prompt_ids])
    started = time.perf_counter()
    # Keyword arguments, not a GenerationConfig: transformers 4.51 puts the
    # model's own defaults (the shipped model samples at temperature 0.8) in
    # place of a passed config's values that equal the library defaults, such
    # as do_sample=False. The sampling settings are unset for the same reason.
    generated = evaluated.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=evaluated.tokenizer.pad_token_id,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    new_ids = generated[0, len(prompt_ids) :]
    return evaluated.tokenizer.decode(new_ids, skip_special_tokens=True), len(new_ids), elapsed_ms


def summarize(
    results: list[ExampleResult],
    evaluated: EvaluatedModel,
    heldout: HeldOutSet,
    output_chain: ScannerChain,
    *,
    model_version: str,
    max_new_tokens: int,
    seed: int,
) -> ModelEvaluatedPayload:
    """Turn the per-example results into the run's payload; `results` must not be empty."""
    count = len(results)
    completion_tokens = sum(result.completion_tokens for result in results)
    generated_tokens = sum(result.generated_tokens for result in results)
    generation_s = sum(result.generation_ms for result in results) / 1000.0
    return ModelEvaluatedPayload(
        model_version=model_version,
        base=evaluated.base,
        adapter=evaluated.adapter,
        quantization=evaluated.quantization,
        dataset=heldout.name,
        dataset_sha256=heldout.sha256,
        examples=count,
        perplexity=math.exp(sum(result.nll_sum for result in results) / completion_tokens),
        completion_tokens=completion_tokens,
        metric=heldout.metric,
        accuracy=sum(result.correct for result in results) / count,
        scanners=list(output_chain.names),
        blocked_rate=sum(result.verdict.blocked for result in results) / count,
        flagged_rate=sum(bool(result.verdict.flagged) and not result.verdict.blocked for result in results) / count,
        scanner_rates=scanner_rates(results, output_chain.names),
        max_new_tokens=max_new_tokens,
        seed=seed,
        generated_tokens=generated_tokens,
        latency=latency_percentiles([result.generation_ms for result in results]),
        tokens_per_s=generated_tokens / generation_s if generation_s > 0 else 0.0,
    )


def scanner_rates(results: list[ExampleResult], names: tuple[str, ...]) -> dict[str, float]:
    """Return, per scanner of the chain, the fraction of outputs it found invalid."""
    invalid = dict.fromkeys(names, 0)
    for result in results:
        for verdict in result.verdict.results:
            invalid[verdict.scanner] += not verdict.valid
    return {name: count / len(results) for name, count in invalid.items()}


def latency_percentiles(durations_ms: list[float]) -> LatencyPercentiles:
    """Return nearest-rank percentiles of a non-empty list of durations."""
    ordered = sorted(durations_ms)

    def rank(fraction: float) -> float:
        return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)

    return LatencyPercentiles(p50_ms=rank(0.50), p95_ms=rank(0.95), p99_ms=rank(0.99), max_ms=round(ordered[-1], 3))
