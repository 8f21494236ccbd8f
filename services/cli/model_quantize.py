"""`sluice model quantize`: write an int8 or int4 copy of a model folder and print its sizes before and after."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.nats_buckets import fail
from services.modelops.quantize_methods import QuantizationMethod, QuantizeError

if TYPE_CHECKING:
    from services.modelops.quantize import QuantizationResult

console = Console()

BYTES_PER_MB = 1_000_000


def quantize_command(
    model_dir: Annotated[Path, typer.Argument(help="The model folder to quantize, written by save_pretrained.")],
    method: Annotated[
        QuantizationMethod,
        typer.Option(help="int8 or int4: weight-only quantization on the CPU with optimum-quanto. awq, gptq: need a CUDA GPU."),
    ],
    out: Annotated[Path, typer.Option(help="The folder to write. It must be absent or empty unless --force is given.")],
    force: Annotated[bool, typer.Option(help="Replace --out when it exists and is not empty.")] = False,
) -> None:
    """Quantize a model's Linear layers (all but the output embeddings) and report the bytes on disk and in memory."""
    # Imported here: torch and transformers take seconds to import, which the other commands need not wait for.
    from services.modelops.quantize import check_request, quantize_folder
    from shared.modeling import ModelLoadError

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        check_request(model_dir, out, method, force)
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("starting", total=None)

            def show(step: str, done: int, total: int | None) -> None:
                progress.update(task, description=step, completed=done, total=total)

            result = quantize_folder(model_dir, out, method, force=force, on_progress=show)
    except (QuantizeError, ModelLoadError) as error:
        raise fail(str(error)) from error
    console.print(sizes_table(result))
    console.print(_summary_line(result), soft_wrap=True)


def sizes_table(result: QuantizationResult) -> Table:
    """Build the table of bytes before and after, for the folder, the state dict and the quantized layers."""
    sizes = result.sizes
    table = Table(title=f"quantize {result.method.value}: {result.out_dir}")
    for header in ("measure", "before", "after", "after / before"):
        table.add_column(header, justify="left" if header == "measure" else "right")
    rows = [
        ("folder on disk", sizes.disk_bytes_before, sizes.disk_bytes_after),
        ("whole state dict in memory", sizes.memory_bytes_before, sizes.memory_bytes_after),
        (f"{sizes.quantized_layers} quantized Linear layers", sizes.layers_bytes_before, sizes.layers_bytes_after),
    ]
    if sizes.layers_fp32_bytes != sizes.layers_bytes_before:
        # A source saved in bf16 or fp16: the compression against fp32 is the figure to compare across models.
        rows.append(("the same layers against fp32", sizes.layers_fp32_bytes, sizes.layers_bytes_after))
    for measure, before, after in rows:
        table.add_row(measure, _megabytes(before), _megabytes(after), f"{after / before:.1%}")
    return table


def _summary_line(result: QuantizationResult) -> str:
    float_layers = ", ".join(result.excluded_layer_names) or "none"
    return (
        f"wrote {result.out_dir}. Layers kept in float: {float_layers}. Embeddings and norms are not Linear layers and stay "
        f"in float too. Serve it with SLUICE_MODEL_DIR={result.out_dir}"
    )


def _megabytes(count: int) -> str:
    return f"{count / BYTES_PER_MB:.2f} MB"
