"""Evaluating the committed model on handcrafted held-out sets: perplexity, accuracy, output flag rates, latency."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from services.modelops.evaluated_model import EvaluatedModel, load_evaluated_model, quantization_label
from services.modelops.evaluation import evaluate, generate
from services.modelops.heldout import HeldOutExample, HeldOutSet, load_heldout
from services.modelops.quantize import METADATA_FILE as QUANTIZATION_METADATA_FILE
from shared.modeling import ModelLoadError
from shared.scanning import ScannerChain, build_output_chain, parse_policy_text
from shared.settings import DEFAULT_MODEL_DIR

MAX_NEW_TOKENS = 12
PROMPTS = ["ROMEO:\n", "JULIET:\n", "KING HENRY:\n"]


@pytest.fixture(scope="module")
def evaluated() -> EvaluatedModel:
    return load_evaluated_model(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def greedy_outputs(evaluated: EvaluatedModel) -> list[str]:
    """What greedy decoding produces after each prompt, computed apart from `evaluate`."""
    return [generate(evaluated, evaluated.tokenizer(prompt)["input_ids"], MAX_NEW_TOKENS)[0] for prompt in PROMPTS]


def _chain(output_yaml: str = "[]") -> ScannerChain:
    return build_output_chain(parse_policy_text(f"input: []\noutput: {output_yaml}\n", source="test policy"))


def _set(examples: list[HeldOutExample], metric: str = "exact_match") -> HeldOutSet:
    return HeldOutSet(name="handcrafted", sha256="0" * 64, metric=metric, examples=tuple(examples))


def _evaluate(evaluated: EvaluatedModel, heldout: HeldOutSet, chain: ScannerChain | None = None):
    return evaluate(evaluated, heldout, chain or _chain(), model_version="v1", max_new_tokens=MAX_NEW_TOKENS, seed=0)


def _reference_nll(evaluated: EvaluatedModel, example: HeldOutExample) -> tuple[float, int]:
    # Independent of `completion_nll`: the model's own loss with the prompt masked out, times the token count.
    tokenizer = evaluated.tokenizer
    prompt = tokenizer(example.prompt)["input_ids"]
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + completion])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    with torch.no_grad():
        mean_loss = evaluated.model(input_ids=ids, labels=labels).loss.item()
    return mean_loss * len(completion), len(completion)


def test_perplexity_is_exp_mean_nll(evaluated: EvaluatedModel) -> None:
    examples = [
        HeldOutExample("ROMEO:\n", "But soft, what light through yonder window breaks?\n"),
        HeldOutExample("First Citizen:\n", "We are accounted poor citizens.\n"),
    ]
    sums = [_reference_nll(evaluated, example) for example in examples]
    expected = math.exp(sum(nll for nll, _ in sums) / sum(count for _, count in sums))

    result = _evaluate(evaluated, _set(examples))

    assert math.isfinite(result.perplexity)
    assert result.perplexity == pytest.approx(expected, rel=1e-4)
    assert result.completion_tokens == sum(count for _, count in sums)


def test_exact_match_counts_greedy_outputs(evaluated: EvaluatedModel, greedy_outputs: list[str]) -> None:
    # The first two references are what greedy decoding writes; the third is not.
    completions = [greedy_outputs[0], greedy_outputs[1], "Not what the model writes.\n"]
    examples = [HeldOutExample(prompt, completion) for prompt, completion in zip(PROMPTS, completions, strict=True)]

    result = _evaluate(evaluated, _set(examples))

    assert result.metric == "exact_match"
    assert result.accuracy == pytest.approx(2 / 3)


def test_first_line_metric_ignores_later_lines(evaluated: EvaluatedModel, greedy_outputs: list[str]) -> None:
    reference = greedy_outputs[0].strip().splitlines()[0] + "\nA second line the model never wrote.\n"

    result = _evaluate(evaluated, _set([HeldOutExample(PROMPTS[0], reference)], "first_line_exact_match"))

    assert result.accuracy == 1.0


def test_output_scanner_rates(evaluated: EvaluatedModel, greedy_outputs: list[str]) -> None:
    # Ban a word that only the first output contains, once as a blocking and once as a flagging scanner.
    word = next(w for w in greedy_outputs[0].split() if len(w) > 3 and all(w not in other for other in greedy_outputs[1:]))
    chain = _chain(
        f"[{{type: BanSubstrings, name: Blocker, options: {{substrings: [{json.dumps(word)}]}}}},"
        f" {{type: BanSubstrings, name: Flagger, action: flag, options: {{substrings: [{json.dumps(word)}]}}}}]"
    )
    examples = [HeldOutExample(prompt, "x\n") for prompt in PROMPTS]

    result = _evaluate(evaluated, _set(examples), chain)

    assert result.scanners == ["Blocker", "Flagger"]
    assert result.blocked_rate == pytest.approx(1 / 3)
    assert result.flagged_rate == 0.0
    assert result.scanner_rates == {"Blocker": pytest.approx(1 / 3), "Flagger": pytest.approx(1 / 3)}


def test_flagging_scanner_alone_flags(evaluated: EvaluatedModel, greedy_outputs: list[str]) -> None:
    word = greedy_outputs[1].split()[0]
    chain = _chain(f"[{{type: BanSubstrings, action: flag, options: {{substrings: [{json.dumps(word)}]}}}}]")

    result = _evaluate(evaluated, _set([HeldOutExample(PROMPTS[1], "x\n")]), chain)

    assert result.blocked_rate == 0.0
    assert result.flagged_rate == 1.0


def test_latency_and_throughput(evaluated: EvaluatedModel) -> None:
    examples = [HeldOutExample(prompt, "x\n") for prompt in PROMPTS]

    result = _evaluate(evaluated, _set(examples))

    assert result.examples == 3
    assert 0 < result.generated_tokens <= 3 * MAX_NEW_TOKENS
    assert 0 < result.latency.p50_ms <= result.latency.p95_ms <= result.latency.max_ms
    assert result.tokens_per_s > 0
    assert (result.max_new_tokens, result.seed) == (MAX_NEW_TOKENS, 0)


def test_runs_repeat_exactly(evaluated: EvaluatedModel) -> None:
    heldout = _set([HeldOutExample(prompt, "x\n") for prompt in PROMPTS])

    first = _evaluate(evaluated, heldout)
    second = _evaluate(evaluated, heldout)

    assert (first.perplexity, first.accuracy, first.generated_tokens) == (second.perplexity, second.accuracy, second.generated_tokens)


def test_labels_come_from_model_and_set(evaluated: EvaluatedModel, tmp_path: Path) -> None:
    dataset = tmp_path / "romeo.jsonl"
    dataset.write_text(json.dumps({"prompt": "ROMEO:\n", "completion": "x\n"}) + "\n")

    result = _evaluate(evaluated, load_heldout(dataset))

    assert (result.model_version, result.base, result.adapter, result.quantization) == ("v1", DEFAULT_MODEL_DIR.name, None, None)
    assert result.dataset == "romeo"
    assert len(result.dataset_sha256) == 64


def test_max_new_tokens_beyond_context_rejected(evaluated: EvaluatedModel) -> None:
    context = evaluated.model.config.max_position_embeddings

    with pytest.raises(ValueError, match="max_new_tokens is"):
        evaluate(evaluated, _set([HeldOutExample("A", "b")]), _chain(), model_version="v1", max_new_tokens=context, seed=0)


def test_folder_without_adapter_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no LoRA adapter"):
        load_evaluated_model(DEFAULT_MODEL_DIR, tmp_path)


def test_quantization_label_read_from_metadata(tmp_path: Path) -> None:
    (tmp_path / QUANTIZATION_METADATA_FILE).write_text(json.dumps({"method": "int8", "weights": "qint8"}))

    assert quantization_label(tmp_path) == "int8"


def test_quantization_label_read_from_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "quanto", "weights": "int4"}}))

    assert quantization_label(tmp_path) == "int4"
    assert quantization_label(DEFAULT_MODEL_DIR) is None
