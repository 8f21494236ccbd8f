from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared.modeling import ModelLoadError, load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR


def test_committed_model_loads_in_eval_mode() -> None:
    model, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)

    assert not model.training
    assert model.device.type == "cpu"
    assert tokenizer.chat_template is not None
    assert tokenizer.pad_token_id is not None


def test_string_path_accepted() -> None:
    model, _ = load_causal_lm(str(DEFAULT_MODEL_DIR))

    assert model.config.model_type == "llama"


def test_missing_folder_raises_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"

    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_causal_lm(missing)


def test_folder_without_weights_raises_load_error(tmp_path: Path) -> None:
    _, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    tokenizer.save_pretrained(tmp_path)

    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_causal_lm(tmp_path)


def test_other_architecture_folder_loads(tmp_path: Path) -> None:
    _, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model, loaded_tokenizer = load_causal_lm(tmp_path)
    output = model.generate(**loaded_tokenizer("ROMEO:", return_tensors="pt"), max_new_tokens=3, do_sample=False)

    assert model.config.model_type == "gpt2"
    assert output.shape[1] == len(loaded_tokenizer("ROMEO:")["input_ids"]) + 3


def test_missing_pad_falls_back_to_eos(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    tokenizer.pad_token = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    _, loaded_tokenizer = load_causal_lm(tmp_path)

    assert loaded_tokenizer.pad_token_id == loaded_tokenizer.eos_token_id


def test_saved_dtype_is_kept(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded, _ = load_causal_lm(tmp_path)

    assert loaded.dtype == torch.bfloat16
