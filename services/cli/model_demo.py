"""`sluice model demo`: the whole optimization loop on the small model, from the corpus to the cost model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.cli.nats_buckets import fail
from services.cli.optimize_demo.run import (
    DEFAULT_CORPUS,
    DEFAULT_EVAL_EXAMPLES,
    DEFAULT_SEED,
    DEFAULT_TRAIN_MINUTES,
    DEFAULT_UNITS,
    DemoError,
    DemoOptions,
)
from shared.logs import configure_logging
from shared.scanning import configure_scanner_runtime
from shared.settings import DEFAULT_MODEL_DIR

console = Console()

# llm-guard logs every scan at debug, and the services' JSON lines would bury the tables.
LOG_LEVEL = "WARNING"


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for every file the run writes. It must be absent or empty unless --force is given.")],
    train_minutes: Annotated[
        float, typer.Option(help="Wall-clock minutes of LoRA training, turned into a step count by timing 3 steps first.")
    ] = DEFAULT_TRAIN_MINUTES,
    units: Annotated[int, typer.Option(help="Simulated users, one held-out prompt each, split 50/50 by the experiment.")] = DEFAULT_UNITS,
    seed: Annotated[
        int, typer.Option(help="Seed of the LoRA initialization, the training order, the users drawn and the feedback noise.")
    ] = DEFAULT_SEED,
    eval_examples: Annotated[int, typer.Option(help="Held-out examples that each evaluation scores.")] = DEFAULT_EVAL_EXAMPLES,
    corpus: Annotated[Path, typer.Option(help="Play script the task is derived from.")] = DEFAULT_CORPUS,
    base: Annotated[Path, typer.Option(help="Base model folder, written by save_pretrained.")] = DEFAULT_MODEL_DIR,
    force: Annotated[bool, typer.Option(help="Delete --out first when it is not empty.")] = False,
) -> None:
    """Fine-tune, quantize, evaluate, register, A/B test through the live stack and price the small model, then write OUT/summary.md."""
    # Imported here: torch, transformers and peft take seconds to import, which the other commands need not wait for.
    from services.cli.optimize_demo.demonstration import run_demonstration

    configure_scanner_runtime()
    configure_logging("cli", LOG_LEVEL, cache_loggers=False)
    options = DemoOptions(out, train_minutes, units, seed, eval_examples, corpus, base, force)
    try:
        run_demonstration(options, console)
    except DemoError as error:
        raise fail(str(error)) from error
