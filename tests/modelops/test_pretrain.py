from __future__ import annotations

from pathlib import Path

import pytest

from services.modelops.pretrain import main
from shared.modeling import load_causal_lm

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus" / "tinyshakespeare.txt"
# The committed folder's size limit.
MAX_FOLDER_BYTES = 20_000_000


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CORPUS.is_file():
        pytest.skip(f"{CORPUS} not found")
    work = tmp_path_factory.mktemp("pretrain")
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    out = work / "model"
    main(["--corpus", str(corpus), "--out", str(out), "--minutes", "0.03", "--eval-interval-s", "1"])
    return out


def test_folder_loads_as_causal_lm(trained_folder: Path) -> None:
    model, tokenizer = load_causal_lm(trained_folder)

    assert model.config.model_type == "llama"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hark."}], tokenize=False).startswith("ROMEO:")


def test_folder_has_expected_files(trained_folder: Path) -> None:
    names = {path.name for path in trained_folder.iterdir()}

    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names


def test_folder_below_size_limit(trained_folder: Path) -> None:
    assert sum(path.stat().st_size for path in trained_folder.iterdir()) < MAX_FOLDER_BYTES


def test_card_reports_bits_per_char(trained_folder: Path) -> None:
    card = (trained_folder / "README.md").read_text(encoding="utf-8")

    assert "bits per character" in card
    assert "--minutes 0.03" in card


def test_folder_is_world_readable(trained_folder: Path) -> None:
    assert trained_folder.stat().st_mode & 0o005 == 0o005
    assert all(path.stat().st_mode & 0o004 for path in trained_folder.iterdir())


def test_rerun_replaces_folder(trained_folder: Path) -> None:
    corpus = trained_folder.parent / "corpus.txt"
    (trained_folder / "stale.txt").write_text("left over", encoding="utf-8")

    main(["--corpus", str(corpus), "--out", str(trained_folder), "--minutes", "0.01", "--eval-interval-s", "1"])

    assert not (trained_folder / "stale.txt").exists()
    assert not list(trained_folder.parent.glob(".model.*"))


def test_nonpositive_minutes_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--corpus", str(CORPUS), "--out", str(tmp_path / "m"), "--minutes", "0"])

    assert "--minutes must be greater than 0" in capsys.readouterr().err


def test_missing_corpus_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "m"), "--minutes", "1"])

    assert "is not a file" in capsys.readouterr().err
