"""The optimization demonstration: dataset, eval, LoRA, quantization, a live A/B experiment and the cost model, in one run.

`sluice model demo --out DIR` runs every step in this process, except the
stack, which runs as child processes:

1. derive the next-speaker task from the corpus, and render its prompts in
   the chat form that the model server builds (`task`);
2. evaluate the base model on the held-out set;
3. train a LoRA adapter within a wall-clock budget and evaluate it;
4. merge it, quantize the merged model to int8 and int4, and evaluate both
   (`offline` runs steps 1 to 4);
5. start the embedded stack with a second model server for the tuned and
   quantized model, and register the models with lineage;
6. send simulated users through the experiment and their graded feedback
   through the API, then fetch the experiment report (`live`);
7. price the served model at its measured tokens/s (`cost`);
8. write `DIR/summary.md` with every figure and the command behind it.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import torch
from rich.console import Console

from services.cli.optimize_demo.cost import price
from services.cli.optimize_demo.live import run_live_steps
from services.cli.optimize_demo.offline import run_offline_steps
from services.cli.optimize_demo.run import SUMMARY_FILE, DemoOptions, DemoRun, check_demo_options
from services.cli.optimize_demo.summary import Summary
from shared.api_keys import DEV_TENANT
from shared.scanning import ScannerChain, build_output_chain, load_policy
from shared.settings import get_settings


def run_demonstration(options: DemoOptions, console: Console, chain: ScannerChain | None = None) -> DemoRun:
    """Run every step, print each one's tables, write `summary.md`, and return what the steps produced.

    `chain` is the output scanner chain that the evaluations run, by default
    the policy's for the development tenant. With `options.force`, an
    existing `options.out` is deleted first. The summary is written even when
    a step fails or the run is interrupted, with the steps that finished, and
    the stack is stopped either way.

    Raises:
        DemoError: an option is invalid; nothing was started or written.
        Exception: the failing step's own error, such as `StackError`.
    """
    check_demo_options(options)
    if options.out.exists():
        shutil.rmtree(options.out)
    options.out.mkdir(parents=True)
    run = DemoRun(options, console, Summary(_summary_header(options)), chain or _policy_chain())
    threads = torch.get_num_threads()
    # On a 2-core machine shared with other jobs, one torch thread trained
    # about ten times faster per step than two, which wait for each other.
    torch.set_num_threads(1)
    try:
        run_offline_steps(run)
        run_live_steps(run)
        price(run)
    finally:
        torch.set_num_threads(threads)
        summary = run.summary.write(options.path(SUMMARY_FILE))
        console.print(f"wrote {summary}")
    return run


def _policy_chain() -> ScannerChain:
    policy = load_policy(get_settings().policy_file)
    return build_output_chain(policy.resolve(DEV_TENANT, None))


def _summary_header(options: DemoOptions) -> list[str]:
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Produced by `{options.command()}`, started {started}.",
        "",
        "The base model has 4.5M parameters, and every figure was measured on the CPU. Latency, tokens/s and",
        "training time depend on what else ran on the machine, so they are rough. The command above each table",
        "reproduces its figures one step at a time.",
    ]
