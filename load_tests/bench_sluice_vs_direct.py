"""Time to first token and tokens per second through Sluice against calling the model server directly.

One embedded stack serves the shipped model. The same `openai` client
streams the same prompts twice per round: once from the model server's own
`/v1/chat/completions`, once from Sluice's, which adds screening,
assignment, the bus, moderation and telemetry. Requests run one at a time
and the two paths alternate, so both see the same machine state.

Run it alone with `python -m load_tests.bench_sluice_vs_direct [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

from load_tests.pipeline_stack import bench_folder
from load_tests.report import BenchSection
from shared.embedded.stack import EmbeddedStack

COMMAND = "python -m load_tests.bench_sluice_vs_direct"
PROMPTS = (
    "Good morrow, my lord. What news from the court?",
    "Speak of the king and of his daughters.",
    "Tell me of the storm upon the heath.",
    "What say you of love and of its follies?",
)
# Long enough that the decode rate dominates the per-request overhead, short
# enough that a full run takes well under a minute on two cores.
MAX_TOKENS = 64
FULL_ROUNDS = 20
QUICK_ROUNDS = 3
# The model server's own name for its base model, which its chat API accepts.
DIRECT_MODEL = "tgi"
# Sluice's OpenAI API: this model name routes by the experiments file, as a plain request does.
SLUICE_MODEL = "auto"
# The per-request timeout of both clients, in seconds. No request in this benchmark comes near it.
REQUEST_TIMEOUT_S = 120.0


@dataclass
class PathTimes:
    """Per-request figures of one path: time to first token, total time and completion tokens."""

    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def decode_tokens_per_s(self) -> list[float]:
        """Tokens after the first, per second after the first token."""
        return [
            (tokens - 1) / (total - ttft)
            for ttft, total, tokens in zip(self.ttft_s, self.total_s, self.tokens)
            if tokens > 1 and total > ttft
        ]

    def overall_tokens_per_s(self) -> list[float]:
        return [tokens / total for total, tokens in zip(self.total_s, self.tokens) if total > 0]


async def stream_once(client: openai.AsyncOpenAI, model: str, prompt: str, times: PathTimes) -> None:
    """Stream one chat completion and record its figures. Usage comes from the final chunk."""
    started = time.perf_counter()
    first_at: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0.8,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first_at is None and chunk.choices and chunk.choices[0].delta.content:
            first_at = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    finished = time.perf_counter()
    if first_at is None:
        raise RuntimeError(f"the {model!r} stream sent no text")
    times.ttft_s.append(first_at - started)
    times.total_s.append(finished - started)
    times.tokens.append(tokens)


async def measure(stack: EmbeddedStack, rounds: int) -> dict[str, PathTimes]:
    direct = openai.AsyncOpenAI(
        base_url=f"{stack.settings.resolved_model_server_url}/v1", api_key="unused", timeout=REQUEST_TIMEOUT_S
    )
    sluice = openai.AsyncOpenAI(base_url=f"{stack.http_url}/v1", api_key=stack.api_key, timeout=REQUEST_TIMEOUT_S)
    results = {"direct": PathTimes(), "sluice": PathTimes()}
    try:
        # One unrecorded request per path warms connections and caches.
        await stream_once(direct, DIRECT_MODEL, PROMPTS[0], PathTimes())
        await stream_once(sluice, SLUICE_MODEL, PROMPTS[0], PathTimes())
        for round_index in range(rounds):
            prompt = PROMPTS[round_index % len(PROMPTS)]
            await stream_once(direct, DIRECT_MODEL, prompt, results["direct"])
            await stream_once(sluice, SLUICE_MODEL, prompt, results["sluice"])
    finally:
        await direct.close()
        await sluice.close()
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=10)[-1]


def section(results: dict[str, PathTimes], rounds: int) -> BenchSection:
    rows = []
    for name, times in results.items():
        rows.append(
            [
                name,
                str(len(times.ttft_s)),
                f"{_median(times.ttft_s) * 1000:.1f}",
                f"{_p90(times.ttft_s) * 1000:.1f}",
                f"{_median(times.decode_tokens_per_s()):.1f}",
                f"{_median(times.overall_tokens_per_s()):.1f}",
                f"{_median([float(tokens) for tokens in times.tokens]):.0f}",
            ]
        )
    direct, sluice = results["direct"], results["sluice"]
    added_ttft_ms = (_median(sluice.ttft_s) - _median(direct.ttft_s)) * 1000
    return BenchSection(
        title="Sluice against the model server, streaming through the same openai client",
        command=COMMAND,
        headers=["path", "requests", "TTFT p50 ms", "TTFT p90 ms", "decode tokens/s p50", "overall tokens/s p50", "tokens p50"],
        rows=rows,
        baseline="the model server's own /v1/chat/completions, called in the same run, alternating with Sluice",
        notes=[
            f"{rounds} rounds, one request at a time, max_tokens {MAX_TOKENS}, temperature 0.8, the shipped model on CPU.",
            f"Sluice adds {added_ttft_ms:.1f} ms to the median time to first token. Moderation holds back only "
            "the end of the text where a banned pattern could still begin (at most 24 characters with the "
            "shipped policy), so the first token usually passes at once.",
            "Decode tokens/s counts the tokens after the first over the time after the first token.",
        ],
    )


def run(quick: bool, data_dir: Path | None = None) -> BenchSection:
    """Start the embedded stack with its model server, measure both paths, stop it."""
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    with bench_folder(data_dir, "sluice-bench-direct-") as root:
        stack = EmbeddedStack.on_free_ports(root / "stack")
        stack.start()
        try:
            results = asyncio.run(measure(stack, rounds))
        finally:
            stack.stop()
    return section(results, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds instead of {FULL_ROUNDS}")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the stack's files and logs here")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(run(arguments.quick, arguments.data_dir).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
