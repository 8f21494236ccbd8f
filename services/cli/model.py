"""`sluice model ...`: the optimization pipeline's commands (pretrain, finetune, quantize, eval, register, list).

Each command lives in its own module of `services/cli/` and is added to
`model_app` here. The pipeline's code is in `services/modelops/`.
"""

from __future__ import annotations

import typer

model_app = typer.Typer(
    help="Build, fine-tune, quantize, evaluate and register models for the stack to serve.", no_args_is_help=True
)
