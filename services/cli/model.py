"""`sluice model ...`: the optimization pipeline's commands, in the order a run uses them.

Each command lives in its own module of `services/cli/` and is added to
`model_app` here. The pipeline's code is in `services/modelops/`.
"""

from __future__ import annotations

import typer

from services.cli.model_demo import demo_command
from services.cli.model_eval import eval_command
from services.cli.model_finetune import finetune_command, make_dataset_command
from services.cli.model_pretrain import pretrain_command
from services.cli.model_quantize import quantize_command
from services.cli.model_registry import list_command, register_command

model_app = typer.Typer(
    help="Build, fine-tune, quantize, evaluate and register models for the stack to serve.", no_args_is_help=True
)

model_app.command("pretrain")(pretrain_command)
model_app.command("make-dataset")(make_dataset_command)
model_app.command("finetune")(finetune_command)
model_app.command("quantize")(quantize_command)
model_app.command("eval")(eval_command)
model_app.command("register")(register_command)
model_app.command("list")(list_command)
model_app.command("demo")(demo_command)
