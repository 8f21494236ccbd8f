"""The demonstration's steps that need no stack: the task dataset, evaluations, LoRA fine-tuning and quantization."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.model_eval import results_table
from services.cli.model_finetune import dataset_table, finetune_table
from services.cli.model_quantize import sizes_table
from services.cli.optimize_demo.run import (
    ADAPTER_DIR,
    ADAPTER_NAME,
    BASE_NAME,
    CHAT_DATASET_DIR,
    DATASET_DIR,
    DemoRun,
)
from services.cli.optimize_demo.summary import EVALUATION_HEADERS, command, evaluation_rows, markdown_table
from services.cli.optimize_demo.task import write_chat_dataset
from services.modelops.evaluated_model import load_evaluated_model
from services.modelops.evaluation import evaluate
from services.modelops.finetune import MERGED_DIR, FinetuneOptions, FinetuneResult, LoraRun, check_options, load_run, train_and_save
from services.modelops.heldout import load_heldout
from services.modelops.quantize import quantize_folder
from services.modelops.quantize_methods import QuantizationMethod
from services.modelops.task_dataset import HELD_OUT_FILE, TRAIN_FILE, write_task_dataset
from services.modelops.lora_training import TrainingSchedule, train_adapter
from shared.events import ModelEvaluatedPayload
from shared.modeling import load_causal_lm

# Training stops at the time budget or after this many epochs, whichever comes first.
MAX_EPOCHS = 3
# Optimizer steps timed on a copy of the model to turn the time budget into a step count.
CALIBRATION_STEPS = 3
# The served model is int4 when its accuracy is at most this far (absolute)
# below the unquantized adapter's, else int8.
INT4_ACCURACY_TOLERANCE = 0.02
EVAL_SEED = 0


def run_offline_steps(run: DemoRun) -> None:
    """Steps 1 to 4: write the dataset, evaluate the base, train and evaluate the adapter, quantize and evaluate."""
    make_dataset(run)
    evaluate_model(run, BASE_NAME, run.options.base, None)
    finetune(run)
    evaluate_model(run, ADAPTER_NAME, run.options.base, run.options.path(ADAPTER_DIR))
    quantize(run)
    add_evaluation_section(run)


def make_dataset(run: DemoRun) -> None:
    """Derive the next-speaker task from the corpus, and write its prompts in the model server's chat form too."""
    options = run.options
    run.console.rule("the next-speaker task")
    dataset_dir = options.path(DATASET_DIR)
    dataset = write_task_dataset(options.corpus, dataset_dir)
    run.dataset = dataset
    run.console.print(dataset_table(dataset, dataset_dir))
    _, tokenizer = load_causal_lm(options.base)
    write_chat_dataset(dataset_dir, tokenizer, options.path(CHAT_DATASET_DIR))
    run.console.print(f"wrote the prompts in the model server's chat form to {options.path(CHAT_DATASET_DIR)}")
    rows = [
        ["training examples", f"{dataset.train_examples:,}"],
        ["held-out examples", f"{dataset.held_out_examples:,}"],
        ["held-out accuracy of the most common answer", f"{dataset.majority_accuracy:.1%}"],
        ["held-out accuracy of the first speaker shown", f"{dataset.first_speaker_accuracy:.1%}"],
    ]
    run.summary.add(
        "1. Task dataset",
        markdown_table(("figure", "value"), rows),
        [command("sluice", "model", "make-dataset", "--corpus", options.corpus, "--out", dataset_dir)],
    )


def evaluate_model(run: DemoRun, version: str, model_dir: Path, adapter_dir: Path | None) -> ModelEvaluatedPayload:
    """Score one model version on the first `eval_examples` chat-form held-out examples and print its table."""
    run.console.rule(f"eval: {version}")
    heldout = load_heldout(run.options.path(CHAT_DATASET_DIR) / HELD_OUT_FILE, run.options.eval_examples)
    evaluated = load_evaluated_model(model_dir, adapter_dir)
    run.parameters = run.parameters or evaluated.model.num_parameters()
    columns = (TextColumn(f"evaluating {version}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=run.console) as progress:
        task = progress.add_task("evaluate", total=len(heldout.examples))
        result = evaluate(
            evaluated,
            heldout,
            run.chain,
            model_version=version,
            max_new_tokens=run.max_new_tokens(),
            seed=EVAL_SEED,
            on_example=lambda _result: progress.advance(task),
        )
    run.console.print(results_table(result))
    run.evaluations[version] = result
    return result


def finetune(run: DemoRun) -> None:
    """Train the adapter on the chat-form training file for the time budget, and write it with the merged model."""
    options = run.options
    run.console.rule("LoRA fine-tuning")
    chat_dir = options.path(CHAT_DATASET_DIR)
    finetune_options = FinetuneOptions(
        base=str(options.base),
        dataset=chat_dir / TRAIN_FILE,
        out=options.path(ADAPTER_DIR),
        held_out=chat_dir / HELD_OUT_FILE,
        epochs=MAX_EPOCHS,
        seed=options.seed,
        merge=True,
    )
    lora = load_run(check_options(finetune_options))
    steps = steps_within(lora, options.train_minutes * 60)
    lora.plan = dataclasses.replace(lora.plan, options=dataclasses.replace(finetune_options, max_steps=steps))
    ratio = lora.trainable_parameters / lora.total_parameters
    run.console.print(
        f"trainable parameters: {lora.trainable_parameters:,} of {lora.total_parameters:,} ({ratio:.2%}); "
        f"{options.train_minutes:g} minutes make {steps} steps (at most {MAX_EPOCHS} epochs)"
    )
    result = _train_with_progress(run.console, lora)
    run.finetune = result
    run.console.print(finetune_table(result))
    _add_finetune_section(run, lora, result)


def steps_within(lora: LoraRun, budget_s: float) -> int:
    """Return how many optimizer steps of `lora` fit in `budget_s` seconds, timed on a copy of its model.

    The copy trains `CALIBRATION_STEPS` steps, so the run's own adapter stays
    at its initialization. The count is at least 1 and at most `MAX_EPOCHS`
    epochs of steps. The timing is wall-clock, so a busy machine gets fewer steps.
    """
    options = lora.plan.options
    probe = copy.deepcopy(lora.model)
    calibration = TrainingSchedule(1, options.batch_size, options.learning_rate, options.seed, CALIBRATION_STEPS)
    started = time.monotonic()
    train_adapter(probe, lora.train_examples, calibration, lora.tokenizer.pad_token_id, lambda *_step: None)
    step_s = (time.monotonic() - started) / CALIBRATION_STEPS
    full = TrainingSchedule(MAX_EPOCHS, options.batch_size, options.learning_rate, options.seed)
    return max(1, min(full.total_steps(len(lora.train_examples)), int(budget_s / step_s)))


def _train_with_progress(console: Console, lora: LoraRun) -> FinetuneResult:
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, loss="-")

        def on_step(step: int, total_steps: int, loss: float) -> None:
            progress.update(task, completed=step, total=total_steps, loss=f"{loss:.3f}")

        return train_and_save(lora, on_step)


def _add_finetune_section(run: DemoRun, lora: LoraRun, result: FinetuneResult) -> None:
    options = lora.plan.options
    rows = [
        ["trainable parameters", f"{lora.trainable_parameters:,} of {lora.total_parameters:,}"],
        [f"optimizer steps (batch {options.batch_size})", f"{result.steps:,}"],
        ["held-out loss before / after (nats/token)", f"{result.held_out_loss_before:.3f} / {result.held_out_loss_after:.3f}"],
        ["training time", f"{result.train_s:,.0f} s wall-clock, {result.train_cpu_s:,.0f} s CPU"],
        ["adapter size on disk", f"{result.adapter_bytes / 1024:,.1f} KiB"],
    ]
    finetune_command = command(
        "sluice", "model", "finetune", options.base, options.dataset, "--held-out", options.held_out, "--out", options.out,
        "--epochs", options.epochs, "--max-steps", options.max_steps, "--seed", options.seed, "--merge",
    )
    run.summary.add("2. LoRA fine-tuning", markdown_table(("figure", "value"), rows), [f"OMP_NUM_THREADS=1 {finetune_command}"])


def quantize(run: DemoRun) -> None:
    """Quantize the merged model to int8 and int4, evaluate both, and choose the one the experiment serves."""
    merged = run.options.path(ADAPTER_DIR) / MERGED_DIR
    for method in (QuantizationMethod.INT8, QuantizationMethod.INT4):
        name = f"{ADAPTER_NAME}-{method.value}"
        run.console.rule(f"quantize: {name}")
        result = quantize_folder(merged, run.options.path(name), method)
        run.console.print(sizes_table(result))
        run.quantized[name] = result
        evaluate_model(run, name, run.options.path(name), None)
    run.served = choose_served(run.evaluations, ADAPTER_NAME)
    run.console.print(f"the experiment serves {run.served} as its treatment arm")
    _add_quantize_section(run, merged)


def choose_served(evaluations: dict[str, ModelEvaluatedPayload], tuned: str) -> str:
    """Return the int4 model's name when its accuracy is within `INT4_ACCURACY_TOLERANCE` of `tuned`'s, else int8's."""
    int4 = evaluations[f"{tuned}-int4"]
    if int4.accuracy >= evaluations[tuned].accuracy - INT4_ACCURACY_TOLERANCE:
        return int4.model_version
    return f"{tuned}-int8"


def _add_quantize_section(run: DemoRun, merged: Path) -> None:
    rows = []
    for name, result in run.quantized.items():
        sizes = result.sizes
        rows.append([name, "folder on disk", sizes.disk_bytes_before, sizes.disk_bytes_after])
        rows.append([name, "state dict in memory", sizes.memory_bytes_before, sizes.memory_bytes_after])
        rows.append([name, f"the {sizes.quantized_layers} quantized Linear layers", sizes.layers_bytes_before, sizes.layers_bytes_after])
    table = [[name, measure, f"{before:,} B", f"{after:,} B ({after / before:.1%})"] for name, measure, before, after in rows]
    lines = markdown_table(("model", "measure", "before (fp32)", "after"), table)
    lines += [
        "",
        f"The experiment serves `{run.served}`: int4 when its accuracy is within "
        f"{INT4_ACCURACY_TOLERANCE:.0%} of the unquantized adapter's, else int8.",
    ]
    commands = [
        command("sluice", "model", "quantize", merged, "--method", result.method.value, "--out", result.out_dir)
        for result in run.quantized.values()
    ]
    run.summary.add("3. Quantization", lines, commands)


def add_evaluation_section(run: DemoRun) -> None:
    """Add the table of every evaluation, with the `sluice model eval` command of each."""
    commands = [_eval_command(run, run.options.base, None, BASE_NAME)]
    commands.append(_eval_command(run, run.options.base, run.options.path(ADAPTER_DIR), ADAPTER_NAME))
    commands += [_eval_command(run, run.options.path(name), None, name) for name in run.quantized]
    lines = markdown_table(EVALUATION_HEADERS, evaluation_rows(run.evaluations))
    lines += [
        "",
        f"On the first {run.options.eval_examples} held-out examples, in the model server's chat form, decoded greedily.",
        "Accuracy is `first_line_exact_match`. Tokens/s is the generated tokens over the summed generation time,",
        "one stream at a time on one torch thread.",
    ]
    run.summary.add("4. Evaluation before and after", lines, commands)


def _eval_command(run: DemoRun, model_dir: Path, adapter_dir: Path | None, version: str) -> str:
    adapter = ["--adapter", adapter_dir] if adapter_dir is not None else []
    return "OMP_NUM_THREADS=1 " + command(
        "sluice", "model", "eval", model_dir, *adapter, "--dataset", run.options.path(CHAT_DATASET_DIR) / HELD_OUT_FILE,
        "--model-version", version, "--max-examples", run.options.eval_examples,
        "--max-new-tokens", run.max_new_tokens(), "--seed", EVAL_SEED, "--no-publish",
    )
