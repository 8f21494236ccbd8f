"""`sluice model finetune` and `sluice model make-dataset`: train a LoRA adapter, and derive the demonstration task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from services.modelops.finetune import (
    DEFAULT_ALPHA,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_RANK,
    DEFAULT_SEED,
    DEFAULT_TARGET_MODULES,
    MERGED_DIR,
    FinetuneError,
    FinetuneOptions,
    FinetuneResult,
    LoraRun,
    check_options,
    load_run,
    train_and_save,
)
from services.modelops.finetune_data import DatasetError
from services.modelops.task_dataset import (
    DEFAULT_HELD_OUT_FRACTION,
    HELD_OUT_FILE,
    TRAIN_FILE,
    TaskDatasetError,
    TaskDatasetSummary,
    write_task_dataset,
)
from services.modelops.task_dataset import DEFAULT_SEED as DEFAULT_DATASET_SEED
from shared.modeling import ModelLoadError

console = Console()
errors = Console(stderr=True)


def finetune_command(
    base: Annotated[str, typer.Argument(help="Base model: a folder written by save_pretrained, or a cached hub id.")],
    dataset: Annotated[Path, typer.Argument(help="JSONL training file: prompt and completion pairs, or chat messages.")],
    out: Annotated[Path, typer.Option(help="Adapter folder to create; it must not exist or be empty.")],
    held_out: Annotated[
        Path | None, typer.Option(help="JSONL file to measure loss on before and after training, in the same format.")
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank r: the inner size of each low-rank update.")] = DEFAULT_RANK,
    alpha: Annotated[float, typer.Option(help="LoRA alpha: the update is scaled by alpha / rank.")] = DEFAULT_ALPHA,
    target_modules: Annotated[
        str, typer.Option(help="Comma-separated names of the linear layers to adapt (the attention query and value projections by default).")
    ] = ",".join(DEFAULT_TARGET_MODULES),
    epochs: Annotated[int, typer.Option(help="Passes over the training file.")] = DEFAULT_EPOCHS,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate, after a linear warmup over 6% of the steps.")] = DEFAULT_LEARNING_RATE,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = DEFAULT_BATCH_SIZE,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps, even within an epoch.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the LoRA initialization and the order of examples.")] = DEFAULT_SEED,
    merge: Annotated[bool, typer.Option(help=f"Also write the base with the adapter merged in, as a full model folder in OUT/{MERGED_DIR}.")] = False,
) -> None:
    """Fine-tune a LoRA adapter on a frozen base model and save it in peft's layout."""
    options = FinetuneOptions(
        base=base,
        dataset=dataset,
        out=out,
        held_out=held_out,
        rank=rank,
        alpha=alpha,
        target_modules=tuple(name.strip() for name in target_modules.split(",") if name.strip()),
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
        merge=merge,
    )
    try:
        with console.status("checking the options and the dataset"):
            plan = check_options(options)
        with console.status(f"loading {base}"):
            run = load_run(plan)
        _print_parameters(run)
        result = _train_with_progress(run)
    except (FinetuneError, DatasetError, ModelLoadError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=1) from error
    console.print(finetune_table(result))


def _print_parameters(run: LoraRun) -> None:
    ratio = run.trainable_parameters / run.total_parameters
    console.print(
        f"trainable parameters: {run.trainable_parameters:,} of {run.total_parameters:,} ({ratio:.2%}); "
        f"{len(run.train_examples):,} training examples"
    )
    if run.truncated_examples:
        console.print(f"[yellow]{run.truncated_examples:,} examples were cut to the model's context[/yellow]")


def _train_with_progress(run: LoraRun) -> FinetuneResult:
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, loss="-")

        def on_step(step: int, total_steps: int, loss: float) -> None:
            progress.update(task, completed=step, total=total_steps, loss=f"{loss:.3f}")

        return train_and_save(run, on_step)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def finetune_table(result: FinetuneResult) -> Table:
    """Build the summary table that `sluice model finetune` prints at the end."""
    table = Table(title="fine-tuning", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("optimizer steps", str(result.steps))
    table.add_row("first step loss (nats/token)", _loss(result.first_step_loss))
    table.add_row("last step loss (nats/token)", _loss(result.last_step_loss))
    table.add_row("held-out loss before (nats/token)", _loss(result.held_out_loss_before))
    table.add_row("held-out loss after (nats/token)", _loss(result.held_out_loss_after))
    table.add_row("training time", f"{result.train_s:,.1f} s ({result.train_cpu_s:,.1f} s CPU)")
    table.add_row("adapter size on disk", f"{result.adapter_bytes / 1024:,.1f} KiB")
    table.add_row("adapter folder", str(result.adapter_dir))
    if result.merged_dir is not None:
        table.add_row("merged model folder", str(result.merged_dir))
    return table


def make_dataset_command(
    corpus: Annotated[Path, typer.Option(help="Play script in UTF-8: `NAME:` lines, speeches separated by blank lines.")],
    out: Annotated[Path, typer.Option(help=f"Folder to write {TRAIN_FILE}, {HELD_OUT_FILE} and the manifests into.")],
    held_out_fraction: Annotated[
        float, typer.Option(help="Fraction of the corpus's blocks of 100 speeches held out, between 0 and 1.")
    ] = DEFAULT_HELD_OUT_FRACTION,
    seed: Annotated[int, typer.Option(help="Seed that draws the held-out blocks.")] = DEFAULT_DATASET_SEED,
) -> None:
    """Derive the next-speaker task from a play script: a seeded train and held-out split and a manifest."""
    try:
        summary = write_task_dataset(corpus, out, held_out_fraction, seed)
    except (TaskDatasetError, OSError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=1) from error
    console.print(dataset_table(summary, out))


def dataset_table(summary: TaskDatasetSummary, out: Path) -> Table:
    """Build the table that `sluice model make-dataset` prints: counts and the held-out baselines."""
    table = Table(title=f"next-speaker dataset in {out}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("training examples", f"{summary.train_examples:,}")
    table.add_row("held-out examples", f"{summary.held_out_examples:,}")
    table.add_row("held-out accuracy, most common answer", f"{summary.majority_accuracy:.1%}")
    table.add_row("held-out accuracy, first speaker shown", f"{summary.first_speaker_accuracy:.1%}")
    table.add_row("manifest", str(summary.manifest_path))
    return table
