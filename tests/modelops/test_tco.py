"""The cost model: arithmetic against a hand-computed scenario, the built-in comparison, input checks, and `sluice tco`."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from services.cli.main import app
from services.modelops.tco import (
    GpuSpec,
    Scenario,
    TcoInputError,
    Traffic,
    cost_ratios,
    cost_scenario,
    gpus_per_replica,
)
from services.modelops.tco_file import DEFAULT_TCO_FILE, load_tco_file

SVG = "{http://www.w3.org/2000/svg}"

# A GPU with 10 GiB of memory, rented without energy, so that energy is billed.
HAND_GPU = GpuSpec(memory_gib=10, hourly_usd=2.0, power_w=250, hourly_usd_includes_energy=False)


def hand_scenario(**changes: Any) -> Scenario:
    fields: dict[str, Any] = {
        "name": "hand",
        "parameters": 7e9,
        "bits_per_weight": 8,
        "memory_overhead_factor": 2.0,
        "attention_heads": 32,
        "gpu": "hand-gpu",
        "throughput_tokens_per_s": 400,
        "throughput_source": "assumed for the test",
        # 2,628,000,000 tokens over 730 h x 3,600 s = 2,628,000 s is 1,000 tokens/s on average.
        "traffic": {"tokens_per_month": 2_628_000_000, "peak_to_average": 3},
        "utilisation": 0.5,
        "energy_usd_per_kwh": 0.10,
        "pue": 1.5,
        "engineering_hours_per_month": 10,
        "engineering_usd_per_hour": 100,
    }
    fields.update(changes)
    return Scenario.model_validate(fields)


def test_hand_computed_scenario() -> None:
    cost = cost_scenario(hand_scenario(), HAND_GPU)

    # Weights: 7e9 x 8 bits / 8 = 7e9 bytes = 6.519 GiB.
    assert cost.weights_gib == pytest.approx(6.519, abs=1e-3)
    # Memory: 7e9 x 2.0 = 14e9 bytes over 10 GiB = 10,737,418,240 bytes is 1.30, so 2 GPUs (2 divides 32 heads).
    assert cost.gpus_per_replica == 2
    # Peak: 1,000 tokens/s x 3 = 3,000. Per GPU: 400 x 0.5 = 200, so 15 GPUs.
    assert cost.peak_tokens_per_s == pytest.approx(3000)
    assert cost.gpus_for_peak == 15
    # 15 GPUs in replicas of 2: 8 replicas, 16 GPUs.
    assert cost.replicas == 8
    assert cost.gpus == 16
    # 16 x 2.00 USD x 730 h = 23,360 USD.
    assert cost.gpu_usd == pytest.approx(23_360)
    # 16 x 0.25 kW x 730 h x 1.5 = 4,380 kWh, at 0.10 USD = 438 USD, billed.
    assert cost.energy_kwh == pytest.approx(4380)
    assert cost.energy_usd == pytest.approx(438)
    assert cost.energy_billed_usd == pytest.approx(438)
    # 10 h x 100 USD = 1,000 USD.
    assert cost.engineering_usd == pytest.approx(1000)
    # 23,360 + 438 + 1,000 = 24,798 USD. Over 2,628 million tokens, that is 9.4361 USD per 1M.
    assert cost.total_usd == pytest.approx(24_798)
    assert cost.usd_per_1m_tokens == pytest.approx(9.4361, abs=1e-4)


def test_energy_included_in_gpu_price_not_billed() -> None:
    gpu = HAND_GPU.model_copy(update={"hourly_usd_includes_energy": True})

    cost = cost_scenario(hand_scenario(), gpu)

    assert cost.energy_usd == pytest.approx(438)
    assert cost.energy_billed_usd == 0
    # 23,360 + 1,000: the energy is in the GPU price.
    assert cost.total_usd == pytest.approx(24_360)


def test_traffic_from_requests_per_day() -> None:
    traffic = Traffic(requests_per_day=100_000, tokens_per_request=300, peak_to_average=1)

    # 100,000 x 300 = 30 million tokens a day, x 730 / 24 = 30.4167 days.
    assert traffic.monthly_tokens() == pytest.approx(912_500_000)


def test_memory_bound_alone_sets_one_replica() -> None:
    # 100 tokens/s peak needs well under one GPU, but the weights need two.
    cost = cost_scenario(hand_scenario(traffic={"tokens_per_month": 262_800_000, "peak_to_average": 1}), HAND_GPU)

    assert cost.gpus_for_peak == 1
    assert cost.replicas == 1
    assert cost.gpus == 2


def test_replica_rounds_up_to_head_divisor() -> None:
    # 7e9 x 7 = 49e9 bytes over 10 GiB is 4.56, so 5 GPUs of memory. 5 does not divide 96 heads, but 6 does.
    scenario = hand_scenario(memory_overhead_factor=7.0, attention_heads=96)

    assert gpus_per_replica(scenario, HAND_GPU, 7e9) == 6


def test_replica_without_heads_keeps_memory_count() -> None:
    scenario = hand_scenario(memory_overhead_factor=7.0, attention_heads=None)

    assert gpus_per_replica(scenario, HAND_GPU, 7e9) == 5


def test_replica_larger_than_heads_rejected() -> None:
    scenario = hand_scenario(memory_overhead_factor=7.0, attention_heads=4)

    with pytest.raises(TcoInputError, match="attention_heads: one replica needs 5 GPUs"):
        gpus_per_replica(scenario, HAND_GPU, 7e9)


def builtin_costs() -> dict[str, Any]:
    inputs = load_tco_file()
    return {scenario.name: cost_scenario(scenario, inputs.gpus[scenario.gpu]) for scenario in inputs.scenarios}


def test_builtin_dense_costs_more_than_quantized() -> None:
    costs = builtin_costs()

    ratios = cost_ratios(list(costs.values()))

    assert ratios["dense-175b-fp16"] > 1
    assert ratios["llama-13b-int4"] == 1
    assert costs["dense-175b-fp16"].gpus > costs["llama-13b-int4"].gpus


def test_builtin_components_add_up() -> None:
    for cost in builtin_costs().values():
        assert cost.total_usd == pytest.approx(cost.gpu_usd + cost.energy_billed_usd + cost.engineering_usd)
        assert cost.usd_per_1m_tokens * cost.tokens_per_month / 1e6 == pytest.approx(cost.total_usd)
        assert cost.gpus == cost.replicas * cost.gpus_per_replica
        assert cost.gpus >= cost.gpus_for_peak


def builtin_document() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_TCO_FILE.read_text(encoding="utf-8"))


def write_document(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "scenarios.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_builtin_file_loads() -> None:
    inputs = load_tco_file()

    assert [scenario.name for scenario in inputs.scenarios] == ["dense-175b-fp16", "llama-13b-int4"]
    # The common fields reach every scenario.
    assert all(scenario.utilisation == inputs.common["utilisation"] for scenario in inputs.scenarios)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("gpu", "tpu-v9", "gpu: unknown GPU type 'tpu-v9'"),
        ("throughput_tokens_per_s", 0, "throughput_tokens_per_s: Input should be greater than 0"),
        ("throughput_tokens_per_s", -5, "throughput_tokens_per_s: Input should be greater than 0"),
        ("utilisation", 0, "utilisation: Input should be greater than 0"),
        ("utilisation", 1.5, "utilisation: Input should be less than or equal to 1"),
        ("bits_per_weight", 0, "bits_per_weight: Input should be greater than 0"),
    ],
)
def test_invalid_field_named(tmp_path: Path, field: str, value: Any, expected: str) -> None:
    document = builtin_document()
    document["scenarios"][1][field] = value

    with pytest.raises(TcoInputError) as raised:
        load_tco_file(write_document(tmp_path, document))

    assert expected in str(raised.value)
    assert "scenarios[1]" in str(raised.value)


def test_missing_field_named(tmp_path: Path) -> None:
    document = builtin_document()
    del document["scenarios"][0]["parameters"]

    with pytest.raises(TcoInputError, match=r"scenarios\[0\] \(dense-175b-fp16\): parameters: Field required"):
        load_tco_file(write_document(tmp_path, document))


def test_missing_common_field_named(tmp_path: Path) -> None:
    document = builtin_document()
    del document["common"]["pue"]

    with pytest.raises(TcoInputError, match="pue: Field required"):
        load_tco_file(write_document(tmp_path, document))


def test_missing_gpu_field_named(tmp_path: Path) -> None:
    document = builtin_document()
    del document["gpus"]["a100-80gb"]["hourly_usd"]

    with pytest.raises(TcoInputError, match="gpus.a100-80gb: hourly_usd: Field required"):
        load_tco_file(write_document(tmp_path, document))


def test_traffic_with_two_volumes_rejected(tmp_path: Path) -> None:
    document = builtin_document()
    document["scenarios"][0]["traffic"] = {**document["common"]["traffic"], "tokens_per_month": 1e9}

    with pytest.raises(TcoInputError, match="traffic: .*not both"):
        load_tco_file(write_document(tmp_path, document))


def test_duplicate_scenario_names_rejected(tmp_path: Path) -> None:
    document = builtin_document()
    document["scenarios"].append(copy.deepcopy(document["scenarios"][0]))

    with pytest.raises(TcoInputError, match="'dense-175b-fp16' appears twice"):
        load_tco_file(write_document(tmp_path, document))


def test_unknown_top_level_key_rejected(tmp_path: Path) -> None:
    document = {**builtin_document(), "gpu": {}}

    with pytest.raises(TcoInputError, match=r"unknown top-level keys \['gpu'\]"):
        load_tco_file(write_document(tmp_path, document))


def test_file_without_gpus_uses_base_catalogue(tmp_path: Path) -> None:
    document = builtin_document()
    catalogue = load_tco_file().gpus
    del document["gpus"]

    inputs = load_tco_file(write_document(tmp_path, document), base_gpus=catalogue)

    assert inputs.gpus == catalogue


def run_tco(*arguments: str) -> Any:
    return CliRunner().invoke(app, ["tco", *arguments])


def test_cli_prints_tables_and_ratio() -> None:
    result = run_tco()

    assert result.exit_code == 0, result.output
    assert "dense-175b-fp16 on a100-80gb" in result.stdout
    assert "llama-13b-int4 on a100-80gb" in result.stdout
    assert "comparison" in result.stdout
    ratio = cost_ratios(list(builtin_costs().values()))["dense-175b-fp16"]
    assert f"dense-175b-fp16 costs {ratio:.1f}x as much per token as llama-13b-int4" in result.stdout


def test_cli_writes_svg_chart(tmp_path: Path) -> None:
    path = tmp_path / "tco.svg"

    result = run_tco("--chart", str(path))

    assert result.exit_code == 0, result.output
    root = ElementTree.parse(path).getroot()
    titles = [rect.findtext(f"{SVG}title") for rect in root.findall(f"{SVG}rect") if rect.find(f"{SVG}title") is not None]
    # Three components per scenario, each bar segment titled with its amount.
    assert len(titles) == 6
    assert any(title.startswith("GPU: $58,363") for title in titles)


def test_cli_writes_html_chart(tmp_path: Path) -> None:
    path = tmp_path / "tco.html"

    result = run_tco("--chart", str(path))

    assert result.exit_code == 0, result.output
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1


def test_cli_png_chart_rejected_before_output(tmp_path: Path) -> None:
    result = run_tco("--chart", str(tmp_path / "tco.png"))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "matplotlib" in result.stderr
    assert not (tmp_path / "tco.png").exists()


def test_cli_unknown_gpu_rejected_before_output() -> None:
    result = run_tco("--from-scenario", "llama-13b-int4", "--gpu", "tpu-v9")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "gpu: unknown GPU type 'tpu-v9'" in result.stderr


def test_cli_zero_throughput_rejected_before_output() -> None:
    result = run_tco("--from-scenario", "llama-13b-int4", "--throughput-tokens-per-s", "0")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "throughput_tokens_per_s: Input should be greater than 0" in result.stderr


def test_cli_option_scenario_missing_fields_named() -> None:
    result = run_tco("--throughput-tokens-per-s", "100")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "missing parameters, bits_per_weight, memory_overhead_factor, gpu." in result.stderr


def test_cli_measured_throughput_adds_scenario() -> None:
    result = run_tco(
        "--from-scenario", "llama-13b-int4", "--name", "llama-13b-measured", "--throughput-tokens-per-s", "820"
    )

    assert result.exit_code == 0, result.output
    assert "llama-13b-measured on a100-80gb" in result.stdout
    # Half the assumed 1,640 tokens/s: the peak of 1,157 tokens/s needs 1,157 / (820 x 0.6) = 2.35, so 3 GPUs.
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ llama-13b-measured"))
    assert row.split("│")[2].strip() == "3"


def test_cli_file_option(tmp_path: Path) -> None:
    document = builtin_document()
    del document["gpus"]
    document["scenarios"] = [document["scenarios"][1]]

    result = run_tco("--file", str(write_document(tmp_path, document)))

    assert result.exit_code == 0, result.output
    assert "llama-13b-int4 on a100-80gb" in result.stdout
    assert "dense-175b-fp16" not in result.stdout
