"""`sluice model quantize`: the summary table, and bad inputs rejected before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from services.cli.main import app
from shared.modeling import QUANTIZATION_MAP_FILE
from shared.settings import DEFAULT_MODEL_DIR


def run_quantize(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["model", "quantize", *arguments])
    # Rich wraps long lines at the terminal width; compare with single spaces.
    return result.exit_code, " ".join(result.output.split())


def test_int8_prints_sizes_table(tmp_path: Path) -> None:
    out = tmp_path / "int8"

    exit_code, output = run_quantize(str(DEFAULT_MODEL_DIR), "--method", "int8", "--out", str(out))

    assert exit_code == 0, output
    assert "28 quantized Linear layers" in output
    assert "folder on disk" in output
    assert "Layers kept in float: lm_head" in output
    assert (out / QUANTIZATION_MAP_FILE).is_file()


def test_unknown_method_rejected(tmp_path: Path) -> None:
    exit_code, output = run_quantize(str(DEFAULT_MODEL_DIR), "--method", "int3", "--out", str(tmp_path / "out"))

    assert exit_code == 2
    assert "'int3' is not one of" in output
    assert list(tmp_path.iterdir()) == []


def test_missing_model_folder_rejected(tmp_path: Path) -> None:
    exit_code, output = run_quantize(str(tmp_path / "no-such-model"), "--method", "int4", "--out", str(tmp_path / "out"))

    assert exit_code == 1
    assert "no-such-model not found" in output
    assert list(tmp_path.iterdir()) == []


def test_occupied_output_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")

    exit_code, output = run_quantize(str(DEFAULT_MODEL_DIR), "--method", "int8", "--out", str(tmp_path))

    assert exit_code == 1
    assert "pass --force" in output
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_gpu_method_without_gpu_writes_nothing(tmp_path: Path, method: str) -> None:
    exit_code, output = run_quantize(str(DEFAULT_MODEL_DIR), "--method", method, "--out", str(tmp_path / "out"))

    assert exit_code == 1
    assert f"{method.upper()} needs a CUDA GPU; none is present" in output
    assert list(tmp_path.iterdir()) == []
