"""The demonstration's options, defaults and shared state: what each step reads from the steps before it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from services.cli.optimize_demo.summary import Summary, command
from services.cli.optimize_demo.traffic import UnitResult
from services.modelops.finetune import FinetuneResult
from services.modelops.quantize import QuantizationResult
from services.modelops.task_dataset import MANIFEST_FILE, TaskDatasetSummary
from shared.events import ModelEvaluatedPayload
from shared.experiment_analysis.report import ExperimentReport
from shared.scanning import ScannerChain
from shared.settings import DEFAULT_MODEL_DIR, REPO_ROOT

DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "data" / "corpus" / "tinyshakespeare.txt"
# NOTE: sized on a busy 2-core machine, where one torch thread trained 2.3
# steps/s: 5 minutes make about 690 steps, nearly two epochs of the 6,085 examples.
DEFAULT_TRAIN_MINUTES = 5.0
# 200 users give each arm about 85 units once prompt screening has blocked
# some prompts (31 of 200 in one run). That is enough to show a lift of 10 to
# 20 points in the conversion rate (the task accuracy) from a base rate near 0.
DEFAULT_UNITS = 200
DEFAULT_SEED = 1234
# 300 of the 675 held-out examples: a 95% interval of about ±6 points on an
# accuracy near 50%, at about 30 s per model evaluated.
DEFAULT_EVAL_EXAMPLES = 300
# The registry names and model versions of the demonstration's models.
BASE_NAME = "tinyshakespeare-llama"
ADAPTER_NAME = "next-speaker"
# Folders under --out.
DATASET_DIR = "dataset"
CHAT_DATASET_DIR = "chat-dataset"
ADAPTER_DIR = "adapter"
CONFIG_DIR = "config"
STACK_DIR = "stack"
SUMMARY_FILE = "summary.md"
EXPERIMENT_CHART = "experiment.svg"
TCO_CHART = "tco.svg"


class DemoError(RuntimeError):
    """An option is invalid. The message names it and what to pass."""


@dataclass(frozen=True)
class DemoOptions:
    """Settings of one demonstration run: the output folder, training budget, simulated users, evaluation size and seed.

    `seed` seeds the LoRA initialization, the order of training examples, the
    draw of simulated users and the feedback noise. The dataset split keeps
    `sluice model make-dataset`'s own seed, so the held-out set is the documented one.
    """

    out: Path
    train_minutes: float = DEFAULT_TRAIN_MINUTES
    units: int = DEFAULT_UNITS
    seed: int = DEFAULT_SEED
    eval_examples: int = DEFAULT_EVAL_EXAMPLES
    corpus: Path = DEFAULT_CORPUS
    base: Path = DEFAULT_MODEL_DIR
    force: bool = False

    def path(self, name: str) -> Path:
        """Return the path of `name` under `out`."""
        return self.out / name

    def command(self) -> str:
        """Return the `sluice model demo` command line that runs with these options."""
        return command(
            "sluice", "model", "demo", "--out", self.out, "--train-minutes", self.train_minutes, "--units", self.units,
            "--seed", self.seed, "--eval-examples", self.eval_examples,
        )


def check_demo_options(options: DemoOptions) -> None:
    """Raise `DemoError` for an option out of range, a missing corpus or model, or an occupied `--out` without `--force`."""
    if not options.train_minutes > 0:
        raise DemoError(f"--train-minutes {options.train_minutes} is invalid: pass a number of minutes above 0, such as 5")
    if options.units < 2:
        raise DemoError(f"--units {options.units} is invalid: pass at least 2, one per arm, such as {DEFAULT_UNITS}")
    if options.eval_examples < 1:
        raise DemoError(f"--eval-examples {options.eval_examples} is invalid: pass at least 1, such as {DEFAULT_EVAL_EXAMPLES}")
    if not options.corpus.is_file():
        raise DemoError(f"corpus {options.corpus} not found: pass --corpus the tinyshakespeare text file")
    if not (options.base / "config.json").is_file():
        raise DemoError(f"base model {options.base} has no config.json: pass --base a folder that save_pretrained wrote")
    if options.out.exists() and not options.out.is_dir():
        raise DemoError(f"--out {options.out} is a file; choose a folder")
    if options.out.is_dir() and any(options.out.iterdir()) and not options.force:
        raise DemoError(f"--out {options.out} is not empty; choose another folder or pass --force to replace it")


@dataclass
class DemoRun:
    """The state of one run: its options and output, and the results of the steps finished so far."""

    options: DemoOptions
    console: Console
    summary: Summary
    chain: ScannerChain
    dataset: TaskDatasetSummary | None = None
    # The base model's parameter count, for the cost model.
    parameters: int = 0
    evaluations: dict[str, ModelEvaluatedPayload] = field(default_factory=dict)
    finetune: FinetuneResult | None = None
    quantized: dict[str, QuantizationResult] = field(default_factory=dict)
    # The quantized model's name that the experiment's treatment arm serves.
    served: str = ""
    units: list[UnitResult] = field(default_factory=list)
    report: ExperimentReport | None = None

    def manifest(self) -> dict[str, object]:
        """Return the task dataset's manifest, which `sluice model make-dataset` wrote."""
        return json.loads(self.options.path(DATASET_DIR).joinpath(MANIFEST_FILE).read_text(encoding="utf-8"))

    def max_new_tokens(self) -> int:
        """Return the new-token limit that fits the longest completion, as the manifest records it."""
        return int(self.manifest()["max_new_tokens"])  # type: ignore[call-overload]

    def corpus_sha256(self) -> str:
        """Return the corpus's SHA-256 hex digest, the data hash of every model trained on it."""
        corpus = self.manifest()["corpus"]
        return str(corpus["sha256"])  # type: ignore[index]
