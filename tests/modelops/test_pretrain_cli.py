"""`sluice model pretrain`: the command trains and saves a folder, prints its table, rejects bad options, and keeps the script's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import model_pretrain
from services.cli.main import app
from services.modelops import pretrain
from services.modelops.training_loop import Recipe

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus" / "tinyshakespeare.txt"


def test_command_saves_folder_and_prints_table(tmp_path: Path) -> None:
    if not CORPUS.is_file():
        pytest.skip(f"{CORPUS} not found")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    out = tmp_path / "model"
    arguments = ["model", "pretrain", "--corpus", str(corpus), "--out", str(out), "--minutes", "0.02", "--eval-interval-s", "1"]

    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    assert "best validation" in result.output
    assert "bits/char" in result.output


def test_command_rejects_nonpositive_minutes(tmp_path: Path) -> None:
    arguments = ["model", "pretrain", "--corpus", str(CORPUS), "--out", str(tmp_path / "m"), "--minutes", "0"]

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 2
    assert not (tmp_path / "m").exists()


def test_defaults_match_script() -> None:
    assert model_pretrain.DEFAULT_EVAL_INTERVAL_S == Recipe.eval_interval_s
    assert model_pretrain.DEFAULT_THREADS == pretrain.DEFAULT_THREADS
    assert model_pretrain.DEFAULT_SEED == pretrain.DEFAULT_SEED
