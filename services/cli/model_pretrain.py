"""`sluice model pretrain`: train the small base model and its tokenizer from a text corpus, with a progress bar and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from services.modelops.pretrain import PretrainResult

console = Console()

# The defaults of `python -m services.modelops.pretrain`, repeated here so
# that `--help` works without importing torch; a test keeps them equal.
DEFAULT_EVAL_INTERVAL_S = 30.0
DEFAULT_THREADS = 2
DEFAULT_SEED = 1234


def pretrain_command(
    corpus: Annotated[Path, typer.Option(help="UTF-8 text file to train on.")],
    out: Annotated[Path, typer.Option(help="The model folder to write; an existing one is replaced.")],
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget in minutes.")],
    eval_interval_s: Annotated[float, typer.Option(help="Seconds between validation runs.")] = DEFAULT_EVAL_INTERVAL_S,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = DEFAULT_THREADS,
    seed: Annotated[int, typer.Option(help="Seed for torch, numpy and random.")] = DEFAULT_SEED,
) -> None:
    """Train a small Llama and a byte-level BPE tokenizer from scratch, keep the best checkpoint, and save the folder."""
    # Imported here: torch and transformers take seconds to import, which the other commands need not wait for.
    from services.modelops.pretrain import parse_args, run

    argv = ["--corpus", str(corpus), "--out", str(out), "--minutes", f"{minutes!r}"]
    argv += ["--eval-interval-s", f"{eval_interval_s!r}", "--threads", str(threads), "--seed", str(seed)]
    args = parse_args(argv)
    budget_s = minutes * 60
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=budget_s)

        def show(point: dict[str, float]) -> None:
            description = f"step {int(point['step'])}, val {point['val_bits_per_char']:.3f} bits/char"
            progress.update(task, completed=min(point["elapsed_s"], budget_s), description=description)

        result = run(args, show)
        progress.update(task, completed=budget_s)
    console.print(summary_table(result))


def summary_table(result: PretrainResult) -> Table:
    """Build the table of the run's figures."""
    table = Table(title=f"pretrain: {result.out}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("training tokens", f"{result.train_tokens:,}")
    table.add_row("validation tokens", f"{result.val_tokens:,}")
    table.add_row("steps", f"{result.steps:,}")
    table.add_row("training time", f"{result.elapsed_s:.1f} s")
    table.add_row("best validation", f"{result.val_bits_per_char:.3f} bits/char")
    return table
