"""`sluice model finetune` and `sluice model make-dataset` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from services.cli.main import app
from services.modelops.task_dataset import HELD_OUT_FILE, TRAIN_FILE
from shared.settings import DEFAULT_MODEL_DIR
from tests.modelops.test_finetune import write_dataset
from tests.modelops.test_task_dataset import write_script
from tests.modelops.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)


def flat(text: str) -> str:
    """Join the lines that the terminal renderer wrapped, so that a message can be matched whole."""
    return " ".join(text.split())


def sluice(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["model", *arguments])
    return result.exit_code, flat(result.output)


def test_finetune_prints_parameters_and_summary(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "train.jsonl")
    out = tmp_path / "adapter"

    code, output = sluice(
        "finetune", str(DEFAULT_MODEL_DIR), str(dataset), "--out", str(out), "--held-out", str(dataset),
        "--max-steps", "2", "--batch-size", "4", "--merge",
    )

    assert code == 0, output
    assert "trainable parameters: 32,768 of 4,491,520 (0.73%); 8 training examples" in output
    assert "optimizer steps │ 2" in output
    assert "held-out loss after (nats/token)" in output
    assert (out / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()


def test_finetune_rank_zero_rejected(tmp_path: Path) -> None:
    out = tmp_path / "adapter"

    code, output = sluice("finetune", str(DEFAULT_MODEL_DIR), str(write_dataset(tmp_path / "train.jsonl")), "--out", str(out), "--rank", "0")

    assert code == 1
    assert "error: --rank 0 is invalid: pass a whole number of at least 1, such as 8" in output
    assert not out.exists()


def test_finetune_bad_dataset_rejected(tmp_path: Path) -> None:
    dataset = tmp_path / "train.jsonl"
    dataset.write_text('{"prompt": "A", "completion": "B"}\n{"prompt": "A"}\n')
    out = tmp_path / "adapter"

    code, output = sluice("finetune", str(DEFAULT_MODEL_DIR), str(dataset), "--out", str(out))

    assert code == 1
    assert f"{dataset}:2: completion: missing" in output
    assert not out.exists()


def test_finetune_unknown_module_rejected(tmp_path: Path) -> None:
    out = tmp_path / "adapter"

    code, output = sluice(
        "finetune", str(DEFAULT_MODEL_DIR), str(write_dataset(tmp_path / "train.jsonl")), "--out", str(out),
        "--target-modules", "q_proj,c_attn",
    )

    assert code == 1
    assert "--target-modules c_attn not found" in output
    assert not out.exists()


def test_make_dataset_writes_splits(tmp_path: Path) -> None:
    corpus = write_script(tmp_path / "play.txt", speeches=1000)

    code, output = sluice("make-dataset", "--corpus", str(corpus), "--out", str(tmp_path / "task"))

    manifest = json.loads((tmp_path / "task" / "manifest.json").read_text())
    assert code == 0, output
    assert f"training examples │ {manifest['counts']['train']:,}" in output
    assert (tmp_path / "task" / TRAIN_FILE).is_file()
    assert (tmp_path / "task" / HELD_OUT_FILE).is_file()


def test_make_dataset_bad_fraction_rejected(tmp_path: Path) -> None:
    corpus = write_script(tmp_path / "play.txt", speeches=1000)

    code, output = sluice("make-dataset", "--corpus", str(corpus), "--out", str(tmp_path / "task"), "--held-out-fraction", "1.5")

    assert code == 1
    assert "held-out fraction 1.5 is out of range" in output
    assert not (tmp_path / "task").exists()
