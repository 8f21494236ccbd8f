"""LoRA fine-tuning of the committed model: a few optimizer steps on a handful of next-speaker examples."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel

from services.model_server.adapters import load_adapters
from services.modelops.finetune import (
    MERGED_DIR,
    RUN_FILE,
    FinetuneError,
    FinetuneOptions,
    FinetuneResult,
    check_options,
    load_run,
    train_and_save,
)
from services.modelops.finetune_data import DatasetError
from services.modelops.lora_training import mean_completion_loss
from services.modelops.task_dataset import Speech, make_example
from shared.modeling import ModelLoadError, load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR
from tests.modelops.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

# Enough for the loss to fall clearly on 8 examples, in a few seconds on 2 cores.
# Ten epochs of 2 batches would be 20 steps, so the step cap is what stops training.
STEPS = 6
BATCH_SIZE = 4
# High, so that six steps move the adapter far enough for every check to see it.
LEARNING_RATE = 1e-2
# Folding B @ A into W only reorders fp32 additions: merged and unmerged
# logits (up to about 16) differed by 9e-6 at most, while the adapter itself
# moved them by up to 8.
MERGE_ATOL = 1e-4
SPEAKERS = ("ROMEO", "JULIET", "NURSE", "MERCUTIO")
PROBE = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me.\n\nNext speaker:\n"


def write_dataset(path: Path, count: int = 8) -> Path:
    records = []
    for index in range(count):
        first, second = SPEAKERS[index % 4], SPEAKERS[(index + 1) % 4]
        context = [Speech(first, (f"Line {index} of {first.lower()}.",)), Speech(second, ("And mine.",))]
        records.append(make_example(context, Speech(first, ("Again.",))))
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def options(tmp_path: Path, **changes: object) -> FinetuneOptions:
    dataset = write_dataset(tmp_path / "train.jsonl")
    base = FinetuneOptions(
        base=str(DEFAULT_MODEL_DIR),
        dataset=dataset,
        out=tmp_path / "adapters" / "next-speaker",
        held_out=dataset,
        batch_size=BATCH_SIZE,
        epochs=10,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
    )
    return replace(base, **changes)


@cache
def probe_ids() -> torch.Tensor:
    return torch.tensor([AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)(PROBE)["input_ids"]])


def base_logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=probe_ids()).logits


@dataclass
class TrainedRun:
    result: FinetuneResult
    base_before: dict[str, torch.Tensor]
    base_after: dict[str, torch.Tensor]
    train_loss_before: float
    train_loss_after: float
    trained_logits: torch.Tensor
    trainable_parameters: int
    total_parameters: int


def base_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """Copy the base model's tensors under their original names, without the LoRA matrices."""
    state = model.get_base_model().state_dict()
    return {name.replace(".base_layer", ""): tensor.clone() for name, tensor in state.items() if "lora_" not in name}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    run = load_run(check_options(options(tmp_path_factory.mktemp("finetune"))))
    before = base_state(run.model)
    loss_before = mean_completion_loss(run.model, run.train_examples, run.tokenizer.pad_token_id)

    result = train_and_save(run, lambda step, total, loss: None)

    loss_after = mean_completion_loss(run.model, run.train_examples, run.tokenizer.pad_token_id)
    return TrainedRun(
        result, before, base_state(run.model), loss_before, loss_after, base_logits(run.model),
        run.trainable_parameters, run.total_parameters,
    )


def test_training_lowers_loss(trained: TrainedRun) -> None:
    assert trained.result.steps == STEPS
    assert trained.train_loss_after < trained.train_loss_before - 1.0
    assert trained.result.held_out_loss_after < trained.result.held_out_loss_before


def test_base_weights_unchanged(trained: TrainedRun) -> None:
    on_disk = load_causal_lm(DEFAULT_MODEL_DIR)[0].state_dict()

    assert trained.base_after.keys() == on_disk.keys()
    for name, tensor in on_disk.items():
        assert torch.equal(trained.base_before[name], tensor), name
        assert torch.equal(trained.base_after[name], tensor), name


def test_only_lora_trainable(trained: TrainedRun) -> None:
    # Rank 8 on q_proj and v_proj (256 x 256) in each of 4 layers: A is 8 x 256 and B is 256 x 8.
    assert trained.trainable_parameters == 4 * 2 * (8 * 256 + 256 * 8)
    assert trained.total_parameters == 4_491_520


def test_adapter_folder_layout(trained: TrainedRun) -> None:
    folder = trained.result.adapter_dir
    config = json.loads((folder / "adapter_config.json").read_text())
    lineage = json.loads((folder / RUN_FILE).read_text())

    assert (folder / "adapter_model.safetensors").is_file()
    assert config["peft_type"] == "LORA"
    assert config["r"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert lineage["result"]["steps"] == STEPS
    assert len(lineage["dataset"]["sha256"]) == 64
    assert not (folder / MERGED_DIR).exists()
    assert trained.result.adapter_bytes == sum(p.stat().st_size for p in folder.iterdir() if p.name != RUN_FILE)


def test_saved_adapter_changes_outputs(trained: TrainedRun) -> None:
    base, _ = load_causal_lm(DEFAULT_MODEL_DIR)
    plain = base_logits(base)

    reloaded = PeftModel.from_pretrained(base, str(trained.result.adapter_dir)).eval()
    tuned = base_logits(reloaded)

    assert not torch.allclose(tuned, plain, atol=1e-2)
    torch.testing.assert_close(tuned, trained.trained_logits)


def test_model_server_loads_adapter(trained: TrainedRun) -> None:
    base, _ = load_causal_lm(DEFAULT_MODEL_DIR)

    _, names = load_adapters(base, trained.result.adapter_dir.parent)

    assert names == frozenset({"next-speaker"})


def test_merged_matches_adapter(tmp_path: Path) -> None:
    run = load_run(check_options(options(tmp_path, merge=True)))
    result = train_and_save(run, lambda step, total, loss: None)
    base, _ = load_causal_lm(DEFAULT_MODEL_DIR)
    plain = base_logits(base)
    # peft adds the LoRA layers to `base` in place, so `plain` is taken first.
    unmerged = base_logits(PeftModel.from_pretrained(base, str(result.adapter_dir)).eval())

    merged_model, merged_tokenizer = load_causal_lm(result.merged_dir)
    merged = base_logits(merged_model)

    assert result.merged_dir == result.adapter_dir / MERGED_DIR
    assert merged_tokenizer.chat_template
    assert not any("lora" in name for name in merged_model.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=MERGE_ATOL)
    assert not torch.allclose(merged, plain, atol=1e-2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 0}, "--rank 0 is invalid"),
        ({"rank": -4}, "--rank -4 is invalid"),
        ({"alpha": 0.0}, "--alpha 0.0 is invalid"),
        ({"alpha": -1.0}, "--alpha -1.0 is invalid"),
        ({"epochs": 0}, "--epochs 0 is invalid"),
        ({"learning_rate": 0.0}, "--learning-rate 0.0 is invalid"),
        ({"batch_size": 0}, "--batch-size 0 is invalid"),
        ({"max_steps": 0}, "--max-steps 0 is invalid"),
        ({"target_modules": ()}, "--target-modules is empty"),
        ({"target_modules": ("q_proj", "query")}, "--target-modules query not found"),
    ],
)
def test_bad_option_rejected(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    bad = options(tmp_path, **changes)

    with pytest.raises(FinetuneError, match=message):
        check_options(bad)

    assert not bad.out.exists()


def test_unknown_module_lists_layers(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError) as caught:
        check_options(options(tmp_path, target_modules=("attn",)))

    assert "down_proj,gate_proj,k_proj,lm_head,o_proj,q_proj,up_proj,v_proj" in str(caught.value)


def test_missing_dataset_rejected(tmp_path: Path) -> None:
    bad = options(tmp_path, dataset=tmp_path / "absent.jsonl")

    with pytest.raises(DatasetError, match="absent.jsonl does not exist"):
        check_options(bad)

    assert not bad.out.exists()


def test_missing_base_rejected(tmp_path: Path) -> None:
    bad = options(tmp_path, base=str(tmp_path / "no-model"))

    with pytest.raises(ModelLoadError, match="no-model"):
        check_options(bad)

    assert not bad.out.exists()


def test_nonempty_out_rejected(tmp_path: Path) -> None:
    bad = options(tmp_path)
    bad.out.mkdir(parents=True)
    (bad.out / "keep.txt").write_text("mine")

    with pytest.raises(FinetuneError, match="not an empty folder"):
        check_options(bad)

    assert [path.name for path in bad.out.iterdir()] == ["keep.txt"]


def test_invalid_held_out_rejected(tmp_path: Path) -> None:
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text('{"prompt": "A", "completion": ""}\n')

    with pytest.raises(DatasetError, match="held_out.jsonl:1: completion: empty"):
        check_options(options(tmp_path, held_out=held_out))
