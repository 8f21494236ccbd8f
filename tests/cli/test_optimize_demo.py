"""The demonstration's pieces that need no stack: chat-form prompts, serving files, units, feedback, options, budget, cost."""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from services.cli.main import app
from services.cli.optimize_demo.cost import tco_command, tco_options
from services.cli.optimize_demo.live import graded_counts
from services.cli.optimize_demo.offline import MAX_EPOCHS, choose_served, steps_within
from services.cli.optimize_demo.run import DemoError, DemoOptions, DemoRun, check_demo_options
from services.cli.optimize_demo.serving import (
    BASE_BACKEND,
    EXPERIMENT_KEY,
    TUNED_BACKEND,
    Arm,
    backends_config,
    experiments_config,
    write_yaml,
)
from services.cli.optimize_demo.summary import Summary, command, markdown_table
from services.cli.optimize_demo.task import CHAT_TASK_NAME, render_user_prompt, write_chat_dataset
from services.cli.optimize_demo.traffic import THUMBS_NOISE, UnitResult, feedback_bodies, plan_units
from services.modelops.finetune import FinetuneOptions, check_options, load_run
from services.modelops.model_size import SizeReport
from services.modelops.quantize import QuantizationResult
from services.modelops.quantize_methods import QuantizationMethod
from services.modelops.task_dataset import HELD_OUT_FILE, HELD_OUT_MANIFEST_FILE, METRIC_NAME, TRAIN_FILE
from shared.events import LatencyPercentiles, ModelEvaluatedPayload
from shared.experiments import check_variant_backends, load_backends, load_experiments
from shared.modeling import load_causal_lm
from shared.scanning import ScannerChain
from shared.settings import DEFAULT_MODEL_DIR
from tests.modelops.test_finetune import write_dataset
from tests.modelops.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

PROMPT = "ROMEO:\nBut soft.\n\nJULIET:\nAy me.\n\nNext speaker:\n"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_causal_lm(DEFAULT_MODEL_DIR)[1]


def evaluation(version: str, accuracy: float, tokens_per_s: float = 100.0) -> ModelEvaluatedPayload:
    latency = LatencyPercentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=2.0, max_ms=2.0)
    return ModelEvaluatedPayload(
        model_version=version, base="base", adapter=None, quantization=None, dataset="set", dataset_sha256="0" * 64,
        examples=10, perplexity=5.0, completion_tokens=20, metric=METRIC_NAME, accuracy=accuracy, scanners=[],
        blocked_rate=0.0, flagged_rate=0.0, scanner_rates={}, max_new_tokens=19, seed=0, generated_tokens=40,
        latency=latency, tokens_per_s=tokens_per_s,
    )


# Chat-form prompts.


def test_rendered_prompt_is_chat_template_form(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rendered = render_user_prompt(tokenizer, PROMPT)

    assert rendered == "ROMEO:\n" + PROMPT.strip() + "\n\nJULIET:\n"


def test_chat_dataset_keeps_completions(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "dataset"
    source.mkdir()
    for name in (TRAIN_FILE, HELD_OUT_FILE):
        (source / name).write_text(json.dumps({"prompt": PROMPT, "completion": "ROMEO\n", "task": METRIC_NAME}) + "\n")

    out = write_chat_dataset(source, tokenizer, tmp_path / "chat")

    for name in (TRAIN_FILE, HELD_OUT_FILE):
        [record] = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert record["prompt"] == render_user_prompt(tokenizer, PROMPT)
        assert record["completion"] == "ROMEO\n"
        assert record["task"] == METRIC_NAME
    manifest = json.loads((out / HELD_OUT_MANIFEST_FILE).read_text())
    assert manifest == {"name": CHAT_TASK_NAME, "metric": METRIC_NAME}


# Serving files.


def test_serving_files_load_as_stack_config(tmp_path: Path) -> None:
    control = Arm("base", BASE_BACKEND, "tinyshakespeare-llama", None)
    treatment = Arm("next-speaker-int8", TUNED_BACKEND, "next-speaker-int8", "int8")
    backends_file = write_yaml(tmp_path / "backends.yaml", backends_config("http://127.0.0.1:9999"))
    experiments_file = write_yaml(tmp_path / "experiments.yaml", experiments_config(control, treatment, 19))

    variables = {"SLUICE_MODEL_SERVER_URL": "http://127.0.0.1:8080"}
    backends = load_backends(backends_file, variables)
    experiments = load_experiments(experiments_file, variables)
    check_variant_backends(experiments, experiments_file, backends, backends_file)

    assert backends[BASE_BACKEND].url == "http://127.0.0.1:8080"
    assert backends[TUNED_BACKEND].url == "http://127.0.0.1:9999"
    [experiment] = experiments.experiments
    assert experiment.key == EXPERIMENT_KEY
    assert [(variant.key, variant.weight, variant.backend) for variant in experiment.variants] == [
        ("base", 0.5, BASE_BACKEND),
        ("next-speaker-int8", 0.5, TUNED_BACKEND),
    ]
    assert experiment.variants[1].quantization == "int8"
    for variant in experiment.variants:
        assert variant.params.temperature == 0
        assert variant.params.max_new_tokens == 19
    assert experiments.default_variant.backend == BASE_BACKEND


# Units and feedback.


def test_units_draw_distinct_examples() -> None:
    examples = [{"prompt": f"p{index}", "completion": f"c{index}"} for index in range(10)]

    units = plan_units(examples, 6, random.Random(1), "user")

    assert len({unit.prompt for unit in units}) == 6
    assert len({unit.user_id for unit in units}) == 6
    assert all(unit.expected == "c" + unit.prompt[1:] for unit in units)
    assert [unit.prompt for unit in plan_units(examples, 6, random.Random(1), "user")] == [unit.prompt for unit in units]


def test_units_beyond_examples_rejected() -> None:
    with pytest.raises(ValueError, match="3 units need 3 held-out examples, but the file has 2"):
        plan_units([{"prompt": "a", "completion": "b"}] * 2, 3, random.Random(0), "user")


def test_feedback_follows_grade() -> None:
    units = [
        UnitResult(f"u{index}", "p", "e", f"r{index}", "completed", "arm", output="out", correct=index % 2 == 0)
        for index in range(400)
    ]
    units.append(UnitResult("blocked", "p", "e", "r-blocked", "blocked", None, "InjectionClassifier"))

    bodies = feedback_bodies(units, random.Random(0))

    conversions = {body["request_id"]: body["value"] for body in bodies if body["kind"] == "conversion"}
    thumbs = {body["request_id"]: body["value"] for body in bodies if body["kind"] == "thumbs"}
    assert "r-blocked" not in conversions
    assert conversions == {unit.request_id: int(unit.correct) for unit in units[:400]}
    flipped = sum(thumbs[request_id] != conversion for request_id, conversion in conversions.items())
    # 400 draws at 10%: 40 expected, and 20 to 60 covers more than 99.9% of runs.
    assert 20 <= flipped <= 60
    assert THUMBS_NOISE == 0.1


def test_graded_counts_per_arm() -> None:
    units = [
        UnitResult("a", "p", "e", "r1", "completed", "base", output="x", correct=False),
        UnitResult("b", "p", "e", "r2", "completed", "tuned", output="e", correct=True),
        UnitResult("c", "p", "e", "r3", "completed", "tuned", output="x", correct=False),
        UnitResult("d", "p", "e", "r4", "blocked", None, "InjectionClassifier"),
    ]

    assert graded_counts(units) == {"(blocked by InjectionClassifier)": (0, 1), "base": (0, 1), "tuned": (1, 2)}


# Options.


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_minutes": 0.0}, "--train-minutes 0.0 is invalid"),
        ({"units": 1}, "--units 1 is invalid"),
        ({"eval_examples": 0}, "--eval-examples 0 is invalid"),
        ({"corpus": Path("/nonexistent/corpus.txt")}, "corpus /nonexistent/corpus.txt not found"),
        ({"base": Path("/nonexistent")}, "base model /nonexistent has no config.json"),
    ],
)
def test_invalid_option_rejected(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"out": tmp_path / "out", "corpus": Path(__file__), **changes}
    options = DemoOptions(**fields)  # type: ignore[arg-type]

    with pytest.raises(DemoError, match=message):
        check_demo_options(options)


def test_occupied_out_needs_force(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_text("x")

    with pytest.raises(DemoError, match="is not empty; choose another folder or pass --force"):
        check_demo_options(DemoOptions(out=tmp_path, corpus=Path(__file__)))
    check_demo_options(DemoOptions(out=tmp_path, corpus=Path(__file__), force=True))


def test_cli_rejects_option_before_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["model", "demo", "--out", str(tmp_path / "out"), "--units", "1"])

    assert result.exit_code == 1
    assert "--units 1 is invalid" in result.output
    assert not (tmp_path / "out").exists()


# Training budget.


def test_budget_steps_bounded_and_adapter_untouched(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "train.jsonl")
    options = FinetuneOptions(base=str(DEFAULT_MODEL_DIR), dataset=dataset, out=tmp_path / "adapter", batch_size=4)
    lora = load_run(check_options(options))
    before = {name: parameter.detach().clone() for name, parameter in lora.model.named_parameters() if parameter.requires_grad}

    assert steps_within(lora, 1e-6) == 1
    # 8 examples in batches of 4 make 2 steps per epoch.
    assert steps_within(lora, 1e6) == 2 * MAX_EPOCHS
    for name, parameter in lora.model.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, before[name]), name


# Choosing the served model, and the cost step.


def test_int4_served_when_accuracy_kept() -> None:
    kept = {"t": evaluation("t", 0.30), "t-int8": evaluation("t-int8", 0.30), "t-int4": evaluation("t-int4", 0.29)}
    lost = {**kept, "t-int4": evaluation("t-int4", 0.27)}

    assert choose_served(kept, "t") == "t-int4"
    assert choose_served(lost, "t") == "t-int8"


def test_tco_command_runs_and_prices_served_model(tmp_path: Path) -> None:
    sizes = SizeReport(
        disk_bytes_before=18_000_000, disk_bytes_after=7_800_000, memory_bytes_before=17_835_008,
        memory_bytes_after=7_656_672, quantized_layers=28, layers_bytes_before=13_631_488,
        layers_bytes_after=3_453_152, layers_fp32_bytes=13_631_488,
    )
    run = DemoRun(DemoOptions(out=tmp_path), Console(), Summary([]), ScannerChain(()))
    run.parameters = 4_458_752
    run.served = "t-int8"
    run.quantized["t-int8"] = QuantizationResult(tmp_path / "t-int8", QuantizationMethod.INT8, [], ["lm_head"], sizes)
    run.evaluations["t-int8"] = evaluation("t-int8", 0.3, tokens_per_s=123.45)

    options = tco_options(run)
    result = CliRunner().invoke(app, shlex.split(tco_command(run))[1:], terminal_width=200)

    assert options["bits_per_weight"] == round(7_656_672 * 8 / 4_458_752, 2)
    assert options["throughput_tokens_per_s"] == 123.5
    assert result.exit_code == 0, result.output
    assert "t-int8" in result.output
    assert (tmp_path / "tco.svg").is_file()


# The summary.


def test_summary_lists_commands_before_figures(tmp_path: Path) -> None:
    summary = Summary(["header"])
    summary.add("Step", markdown_table(("a", "b"), [[1, "x y"]]), [command("sluice", "tco", "--name", "two words")])

    text = summary.write(tmp_path / "summary.md").read_text()

    assert text == (
        "# Optimization demonstration\n\nheader\n\n## Step\n\n```sh\nsluice tco --name 'two words'\n```\n\n"
        "| a | b |\n| --- | --- |\n| 1 | x y |\n"
    )
