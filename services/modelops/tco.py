"""The monthly cost of serving a model: GPUs needed, GPU rent, energy, engineering, and cost per 1M tokens.

Pure arithmetic over validated inputs, so that `sluice tco`, the docs and the
tests compute the same figures. `services/modelops/tco_file.py` reads the
inputs from YAML (`shared/config/tco.yaml` ships the GPU catalogue and the
built-in scenarios).

Tokens are generated tokens throughout: the throughput, the traffic and the
cost per 1M tokens all count them. A measured throughput over real requests
already includes the time spent on their prompts.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A year's 8,760 hours over 12 months. GPUs are rented for the whole month
# because the fleet is sized for the peak and not scaled down off-peak.
HOURS_PER_MONTH = 8760 / 12
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
BYTES_PER_GIB = 2**30
WATTS_PER_KILOWATT = 1000
TOKENS_PER_PRICE_UNIT = 1_000_000
# Float products such as 2.0000000000000004 GPUs must not round up to 3.
_CEIL_TOLERANCE = 1e-9


class TcoInputError(ValueError):
    """An input of the cost model is missing or invalid. The message names the scenario and the field."""


class GpuSpec(BaseModel):
    """One machine type of the catalogue: memory, rental price and power draw of one GPU."""

    model_config = ConfigDict(extra="forbid")

    memory_gib: float = Field(gt=0)
    hourly_usd: float = Field(gt=0)
    power_w: float = Field(ge=0)
    # Cloud rental prices include the provider's power bill. An amortised
    # purchase price does not, so the energy cost is then added to the total.
    hourly_usd_includes_energy: bool


class Traffic(BaseModel):
    """Generated tokens per month, given directly or as requests per day times tokens per request."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_month: float | None = Field(default=None, gt=0)
    requests_per_day: float | None = Field(default=None, gt=0)
    tokens_per_request: float | None = Field(default=None, gt=0)
    # Peak tokens/s over the monthly average. The fleet is sized for the peak.
    peak_to_average: float = Field(ge=1)

    @model_validator(mode="after")
    def _one_volume(self) -> Traffic:
        by_requests = (self.requests_per_day, self.tokens_per_request)
        if self.tokens_per_month is not None and any(value is not None for value in by_requests):
            raise ValueError("set tokens_per_month, or requests_per_day with tokens_per_request, not both")
        if self.tokens_per_month is None and None in by_requests:
            raise ValueError("missing volume: set tokens_per_month, or both requests_per_day and tokens_per_request")
        return self

    def monthly_tokens(self) -> float:
        """Return the generated tokens per month."""
        if self.tokens_per_month is not None:
            return self.tokens_per_month
        return self.requests_per_day * self.tokens_per_request * DAYS_PER_MONTH  # type: ignore[operator]


class Scenario(BaseModel):
    """One way of serving a model: the model, the GPU type, its throughput, the traffic and the prices."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    # The model's parameter count, e.g. 175e9.
    parameters: float = Field(gt=0)
    bits_per_weight: float = Field(gt=0, le=32)
    # GPU memory needed over the weights' bytes: KV cache, activations and
    # the runtime's reserve. 1 means the weights alone.
    memory_overhead_factor: float = Field(ge=1)
    # With tensor parallelism the GPUs of one replica must divide the model's
    # attention heads. Leave it out for a model that needs no such split.
    attention_heads: int | None = Field(default=None, gt=0)
    gpu: str = Field(min_length=1)
    # Generated tokens/s that one GPU sustains. For a replica of several GPUs,
    # it is the replica's tokens/s divided by its GPU count.
    throughput_tokens_per_s: float = Field(gt=0)
    throughput_source: str = Field(min_length=1)
    traffic: Traffic
    # The share of the fleet's throughput that the peak may use. The rest is headroom for latency.
    utilisation: float = Field(gt=0, le=1)
    energy_usd_per_kwh: float = Field(ge=0)
    # Data-centre power usage effectiveness: facility energy over IT energy.
    pue: float = Field(ge=1)
    engineering_hours_per_month: float = Field(ge=0)
    engineering_usd_per_hour: float = Field(ge=0)


class ScenarioCost(BaseModel):
    """The cost model's outputs for one scenario, per month unless a name says otherwise."""

    name: str
    gpu: str
    throughput_source: str
    weights_gib: float
    # GPUs that hold one copy of the model (the memory bound).
    gpus_per_replica: int
    # GPUs whose throughput at the utilisation target covers the peak (the throughput bound).
    gpus_for_peak: int
    replicas: int
    gpus: int
    tokens_per_month: float
    peak_tokens_per_s: float
    gpu_usd: float
    energy_kwh: float
    energy_usd: float
    # The part of energy_usd that the total adds: 0 when the GPU price includes energy.
    energy_billed_usd: float
    engineering_usd: float
    total_usd: float
    usd_per_1m_tokens: float


def lookup_gpu(catalogue: dict[str, GpuSpec], scenario: Scenario, label: str | None = None) -> GpuSpec:
    """Return the catalogue entry that `scenario.gpu` names, or raise `TcoInputError` for an unknown type.

    `label` starts the error message. By default it names the scenario.
    """
    try:
        return catalogue[scenario.gpu]
    except KeyError:
        known = ", ".join(sorted(catalogue)) or "none"
        prefix = label or f"scenario {scenario.name!r}"
        raise TcoInputError(
            f"{prefix}: gpu: unknown GPU type {scenario.gpu!r}; "
            f"known types: {known}. Add it under `gpus` in the scenario file"
        ) from None


def cost_scenario(scenario: Scenario, gpu: GpuSpec) -> ScenarioCost:
    """Compute the GPUs needed and the monthly cost of `scenario` on `gpu`.

    Raises `TcoInputError` when one replica needs more GPUs than the model has attention heads.
    """
    weights_bytes = scenario.parameters * scenario.bits_per_weight / 8
    per_replica = gpus_per_replica(scenario, gpu, weights_bytes)
    tokens_per_month = scenario.traffic.monthly_tokens()
    peak_tokens_per_s = tokens_per_month / SECONDS_PER_MONTH * scenario.traffic.peak_to_average
    for_peak = _ceil(peak_tokens_per_s / (scenario.throughput_tokens_per_s * scenario.utilisation))

    # Whole replicas only: a replica's GPUs hold one copy of the weights between them.
    replicas = max(1, _ceil(for_peak / per_replica))
    gpus = replicas * per_replica

    gpu_usd = gpus * gpu.hourly_usd * HOURS_PER_MONTH
    # NOTE: every GPU is counted at its rated power all month, an upper bound.
    energy_kwh = gpus * gpu.power_w / WATTS_PER_KILOWATT * HOURS_PER_MONTH * scenario.pue
    energy_usd = energy_kwh * scenario.energy_usd_per_kwh
    energy_billed_usd = 0.0 if gpu.hourly_usd_includes_energy else energy_usd
    engineering_usd = scenario.engineering_hours_per_month * scenario.engineering_usd_per_hour
    total_usd = gpu_usd + energy_billed_usd + engineering_usd

    return ScenarioCost(
        name=scenario.name,
        gpu=scenario.gpu,
        throughput_source=scenario.throughput_source,
        weights_gib=weights_bytes / BYTES_PER_GIB,
        gpus_per_replica=per_replica,
        gpus_for_peak=for_peak,
        replicas=replicas,
        gpus=gpus,
        tokens_per_month=tokens_per_month,
        peak_tokens_per_s=peak_tokens_per_s,
        gpu_usd=gpu_usd,
        energy_kwh=energy_kwh,
        energy_usd=energy_usd,
        energy_billed_usd=energy_billed_usd,
        engineering_usd=engineering_usd,
        total_usd=total_usd,
        usd_per_1m_tokens=total_usd / (tokens_per_month / TOKENS_PER_PRICE_UNIT),
    )


def gpus_per_replica(scenario: Scenario, gpu: GpuSpec, weights_bytes: float) -> int:
    """Return the GPUs one copy of the model needs: weights times the overhead factor over GPU memory.

    With `attention_heads` set, the count rounds up to a divisor of the heads,
    because tensor parallelism gives each GPU the same number of heads.
    """
    needed_bytes = weights_bytes * scenario.memory_overhead_factor
    count = _ceil(needed_bytes / (gpu.memory_gib * BYTES_PER_GIB))
    heads = scenario.attention_heads
    if heads is None:
        return count
    divisors = [size for size in range(count, heads + 1) if heads % size == 0]
    if not divisors:
        raise TcoInputError(
            f"scenario {scenario.name!r}: attention_heads: one replica needs {count} GPUs of {scenario.gpu}, "
            f"more than the {heads} attention heads that tensor parallelism can split; "
            "choose a GPU with more memory, or leave attention_heads out to allow any GPU count"
        )
    return divisors[0]


def cost_ratios(costs: list[ScenarioCost]) -> dict[str, float]:
    """Return each scenario's cost per 1M tokens over the cheapest scenario's (1.0 for the cheapest).

    Per token rather than per month, so scenarios with different traffic compare fairly.
    """
    cheapest = min(cost.usd_per_1m_tokens for cost in costs)
    return {cost.name: cost.usd_per_1m_tokens / cheapest for cost in costs}


def _ceil(value: float) -> int:
    return math.ceil(value - _CEIL_TOLERANCE)
