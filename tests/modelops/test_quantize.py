from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from optimum.quanto import QModuleMixin, qint8
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from services.model_server.app import load_engine
from services.model_server.sampling import SamplingParams
from services.modelops.model_size import FP32_BYTES, folder_bytes
from services.modelops.quantize import METADATA_FILE, QuantizationResult, quantize_folder, quantize_linear_layers, select_layers
from services.modelops.quantize_methods import QuantizationMethod, QuantizeError, check_method_available
from shared.modeling import QUANTIZATION_MAP_FILE, ModelLoadError, load_causal_lm, save_quantized, supports_inference_mode
from shared.modeling.quantized import load_quantized_model
from shared.settings import DEFAULT_MODEL_DIR

# The largest share of their fp32 bytes that the quantized Linear layers may take.
MAX_LAYER_RATIO = {QuantizationMethod.INT8: 0.30, QuantizationMethod.INT4: 0.18}
CPU_METHODS = list(MAX_LAYER_RATIO)
PROMPT = "ROMEO:\n"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[QuantizationMethod, QuantizationResult]:
    """The shipped model quantized once per CPU method."""
    work = tmp_path_factory.mktemp("quantized")
    return {method: quantize_folder(DEFAULT_MODEL_DIR, work / method.value, method) for method in CPU_METHODS}


@pytest.mark.parametrize("method", CPU_METHODS)
def test_folder_loads_and_generates(quantized, method: QuantizationMethod) -> None:
    model, tokenizer = load_causal_lm(quantized[method].out_dir)
    inputs = tokenizer(PROMPT, return_tensors="pt")

    output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    assert output.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert text.strip()


@pytest.mark.parametrize("method", CPU_METHODS)
def test_reload_restores_saved_tensors(quantized, method: QuantizationMethod) -> None:
    folder = quantized[method].out_dir
    saved = load_file(folder / "model.safetensors")

    model, _ = load_causal_lm(folder)
    reloaded = model.state_dict()

    assert set(saved) <= set(reloaded)
    for key, tensor in saved.items():
        assert torch.equal(reloaded[key], tensor), key


@pytest.mark.parametrize("method", CPU_METHODS)
def test_reload_keeps_layers_quantized(quantized, method: QuantizationMethod) -> None:
    result = quantized[method]
    model, _ = load_causal_lm(result.out_dir)

    for name in result.layer_names:
        assert isinstance(model.get_submodule(name), QModuleMixin), name
    assert not isinstance(model.get_output_embeddings(), QModuleMixin)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_layers_within_ratio_of_fp32(quantized, method: QuantizationMethod) -> None:
    result = quantized[method]

    assert result.sizes.layers_fp32_ratio <= MAX_LAYER_RATIO[method]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_layer_bytes_match_saved_file(quantized, method: QuantizationMethod) -> None:
    # Recomputed from the weights file and the source model, not taken from the report.
    result = quantized[method]
    saved = load_file(result.out_dir / "model.safetensors")
    source, _ = load_causal_lm(DEFAULT_MODEL_DIR)
    prefixes = tuple(f"{name}." for name in result.layer_names)

    saved_bytes = sum(t.numel() * t.element_size() for key, t in saved.items() if key.startswith(prefixes))
    fp32_bytes = sum(source.get_submodule(name).weight.numel() * FP32_BYTES for name in result.layer_names)

    assert saved_bytes == result.sizes.layers_bytes_after
    assert fp32_bytes == result.sizes.layers_fp32_bytes
    assert saved_bytes / fp32_bytes <= MAX_LAYER_RATIO[method]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_whole_model_size_reported(quantized, method: QuantizationMethod) -> None:
    sizes = quantized[method].sizes
    whole_ratio = sizes.memory_bytes_after / sizes.memory_bytes_before
    source_tensors = load_file(DEFAULT_MODEL_DIR / "model.safetensors").values()

    assert sizes.memory_bytes_before == sum(t.numel() * t.element_size() for t in source_tensors)
    assert sizes.disk_bytes_before == folder_bytes(DEFAULT_MODEL_DIR)
    assert sizes.disk_bytes_after < sizes.disk_bytes_before
    # The embeddings and the output layer stay in fp32, so the whole model shrinks less than its Linear layers.
    assert sizes.layers_fp32_ratio < whole_ratio < 1


def test_int4_smaller_than_int8(quantized) -> None:
    int8 = quantized[QuantizationMethod.INT8].sizes
    int4 = quantized[QuantizationMethod.INT4].sizes

    assert int4.layers_bytes_after < int8.layers_bytes_after
    assert int4.memory_bytes_after < int8.memory_bytes_after


@pytest.mark.parametrize("method", CPU_METHODS)
def test_metadata_records_method_and_sizes(quantized, method: QuantizationMethod) -> None:
    result = quantized[method]
    metadata = json.loads((result.out_dir / METADATA_FILE).read_text(encoding="utf-8"))
    disk_without_metadata = folder_bytes(result.out_dir) - (result.out_dir / METADATA_FILE).stat().st_size

    assert metadata["method"] == method.value
    assert metadata["source_model"] == str(DEFAULT_MODEL_DIR)
    assert metadata["library"].startswith("optimum-quanto ")
    assert metadata["sizes_bytes"]["layers_bytes_after"] == result.sizes.layers_bytes_after
    assert metadata["sizes_bytes"]["disk_bytes_after"] == disk_without_metadata


def test_output_embeddings_stay_float(quantized) -> None:
    result = quantized[QuantizationMethod.INT8]
    qmap = json.loads((result.out_dir / QUANTIZATION_MAP_FILE).read_text(encoding="utf-8"))

    assert result.excluded_layer_names == ["lm_head"]
    assert "lm_head" not in qmap
    assert sorted(qmap) == sorted(result.layer_names)


def test_folder_is_world_readable(quantized) -> None:
    folder = quantized[QuantizationMethod.INT8].out_dir

    assert folder.stat().st_mode & 0o005 == 0o005
    assert all(path.stat().st_mode & 0o004 for path in folder.iterdir())


@pytest.mark.parametrize("method", CPU_METHODS)
async def test_model_server_engine_generates(quantized, method: QuantizationMethod) -> None:
    engine = load_engine(quantized[method].out_dir, max_concurrent_generations=1)

    generation = engine.generate(engine.encode(PROMPT), SamplingParams(max_new_tokens=NEW_TOKENS))
    tokens = [token async for token in generation]

    assert len(tokens) == NEW_TOKENS
    assert generation.finish_reason == "length"


def test_only_int4_avoids_inference_mode(quantized) -> None:
    int8, _ = load_causal_lm(quantized[QuantizationMethod.INT8].out_dir)
    int4, _ = load_causal_lm(quantized[QuantizationMethod.INT4].out_dir)
    base, _ = load_causal_lm(DEFAULT_MODEL_DIR)

    assert supports_inference_mode(base)
    assert supports_inference_mode(int8)
    assert not supports_inference_mode(int4)


def test_missing_tensor_raises_load_error(quantized, tmp_path: Path) -> None:
    source = quantized[QuantizationMethod.INT8].out_dir
    for path in source.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight._data"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ModelLoadError, match="is missing 1 of the model's tensors"):
        load_causal_lm(tmp_path)


def test_force_replaces_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("left over", encoding="utf-8")

    quantize_folder(DEFAULT_MODEL_DIR, out, QuantizationMethod.INT8, force=True)

    assert not (out / "stale.txt").exists()
    assert (out / QUANTIZATION_MAP_FILE).is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_existing_folder_rejected_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")

    with pytest.raises(QuantizeError, match="pass --force"):
        quantize_folder(DEFAULT_MODEL_DIR, out, QuantizationMethod.INT8)

    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_missing_model_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="not found"):
        quantize_folder(tmp_path / "no-such-model", tmp_path / "out", QuantizationMethod.INT8)

    assert not (tmp_path / "out").exists()


def test_output_same_as_model_rejected() -> None:
    with pytest.raises(QuantizeError, match="is the model folder itself"):
        quantize_folder(DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR, QuantizationMethod.INT8, force=True)


@pytest.mark.parametrize("method", [QuantizationMethod.AWQ, QuantizationMethod.GPTQ])
def test_gpu_method_without_gpu_rejected(method: QuantizationMethod) -> None:
    with pytest.raises(QuantizeError, match=f"{method.value.upper()} needs a CUDA GPU; none is present"):
        check_method_available(method, cuda_available=False)


@pytest.mark.parametrize("method", [QuantizationMethod.AWQ, QuantizationMethod.GPTQ])
def test_gpu_method_with_gpu_not_in_build(method: QuantizationMethod) -> None:
    with pytest.raises(QuantizeError, match="not available in this build"):
        check_method_available(method, cuda_available=True)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_cpu_method_needs_no_gpu(method: QuantizationMethod) -> None:
    check_method_available(method, cuda_available=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_awq_here_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="AWQ needs a CUDA GPU"):
        quantize_folder(DEFAULT_MODEL_DIR, tmp_path / "out", QuantizationMethod.AWQ)

    assert list(tmp_path.iterdir()) == []


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    _, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    layer_names, excluded = select_layers(model)
    quantize_linear_layers(model, layer_names, qint8, lambda *_: None)
    save_quantized(model, tokenizer, tmp_path)
    input_ids = torch.tensor([[5, 17, 300, 42]])

    reloaded = load_quantized_model(tmp_path)

    assert excluded == ["lm_head"]
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)
