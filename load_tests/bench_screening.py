"""Screening cost: each scanner of the shipped policy alone, and each whole chain, on benign text of two sizes.

The input chain is built as the safety service builds it and the output
chain as the moderation service builds it (`load_policy`, then
`build_input_chain` / `build_output_chain`). A scanner alone is timed as a
one-scanner chain built from its own policy entry, so every row pays the same
chain overhead. The output rows also time the chain's streaming part, which
moderation runs on each new window of output.

Run alone: `python -m load_tests.bench_screening [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from load_tests.latency import LatencySummary, format_ms, time_sequential
from load_tests.report import BenchSection
from shared.scanning import ChainResult, Policy, ScannerChain, build_input_chain, build_output_chain, load_policy
from shared.scanning import configure_scanner_runtime
from shared.logs import configure_logging
from shared.settings import DEFAULT_CONFIG_DIR, REPO_ROOT, Settings

SHIPPED_POLICY = DEFAULT_CONFIG_DIR / "policy.yaml"

# Benign prompts (MT-Bench questions and Self-Instruct user instructions),
# kept next to the repository rather than in it.
PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"
PROMPT_FILES = ("mt_bench.jsonl", "self_instruct_user.jsonl")

# A short chat prompt and a long one with pasted context.
TEXT_CHARS = (200, 2_000)
# Distinct texts per size, cycled through, so no scanner scans the same text twice in a row.
TEXTS_PER_SIZE = 32

FULL_ITERATIONS = 500
QUICK_ITERATIONS = 50
FULL_WARMUP = 20
QUICK_WARMUP = 5

# A scanner that takes at least this share of its chain's p50 gets a note.
DOMINANT_SHARE = 0.5

COMMAND = "python -m load_tests.bench_screening"
TITLE = "Screening: scanner latency"
HEADERS = ["chain", "scanner", "prompt chars", "p50 ms", "p99 ms"]
WHOLE_CHAIN = "whole chain"
# The services' default log level. llm-guard logs every scan at debug through
# structlog, which prints everything until configured, so timing without the
# services' level filter would time the printing.
SERVICE_LOG_LEVEL: str = Settings.model_fields["log_level"].default


Section = Literal["input", "output"]


@dataclasses.dataclass(frozen=True)
class Measurement:
    chain: Section
    scanner: str
    chars: int
    summary: LatencySummary


def load_benign_texts(folder: Path) -> list[str]:
    """Return the benign prompt texts of `PROMPT_FILES` in `folder`, in file order."""
    texts: list[str] = []
    for name in PROMPT_FILES:
        with (folder / name).open(encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines if line.strip()]
        texts += [record["text"] for record in records if record["label"] == "benign"]
    return texts


def texts_of_length(texts: list[str], chars: int, count: int) -> list[str]:
    """Return `count` texts of exactly `chars` characters: consecutive prompts joined by newlines, then cut.

    Text `i` starts with prompt `i`, so the texts differ from one another.
    Raises `ValueError` when `texts` is empty.
    """
    if not texts:
        raise ValueError("no prompt texts to build benchmark texts from; check the prompt files")
    built = []
    for start in range(count):
        parts: list[str] = []
        index = start
        while sum(len(part) + 1 for part in parts) < chars:
            parts.append(texts[index % len(texts)])
            index += 1
        built.append("\n".join(parts)[:chars])
    return built


def time_scans(scan: Callable[[str], object], texts: list[str], iterations: int, warmup: int) -> LatencySummary:
    """Time `scan` on `texts` in turn, in the calling thread."""

    async def call(index: int) -> object:
        return scan(texts[index % len(texts)])

    return asyncio.run(time_sequential(call, iterations, warmup))


def time_async_scans(
    scan: Callable[[str], Awaitable[object]], texts: list[str], iterations: int, warmup: int
) -> LatencySummary:
    """Time the coroutine `scan` on `texts` in turn, on a new event loop."""
    return asyncio.run(time_sequential(lambda index: scan(texts[index % len(texts)]), iterations, warmup))


def single_scanner_chains(policy: Policy, section: Section) -> list[tuple[str, ScannerChain]]:
    """Build one chain per entry of the policy's `section`, each holding that entry alone."""
    specs = policy.input if section == "input" else policy.output
    build = build_input_chain if section == "input" else build_output_chain
    return [(spec.label, build(dataclasses.replace(policy, **{section: (spec,)}))) for spec in specs]


def blocked_count(chain: ScannerChain, texts: list[str]) -> dict[str, int]:
    """Return how many of `texts` each blocking scanner of `chain` stopped, by scanner name."""
    counts: dict[str, int] = {}
    for text in texts:
        result: ChainResult = chain.scan(text)
        if result.blocked_by is not None:
            counts[result.blocked_by] = counts.get(result.blocked_by, 0) + 1
    return counts


class ScreeningBenchmark:
    """Times the scanners of one policy on prepared texts.

    Build it once, then call `measure_input` and `measure_output`.
    """

    def __init__(self, policy: Policy, texts_by_chars: dict[int, list[str]], iterations: int, warmup: int) -> None:
        self._policy = policy
        self._texts_by_chars = texts_by_chars
        self._iterations = iterations
        self._warmup = warmup
        self.input_chain = build_input_chain(policy)
        self.output_chain = build_output_chain(policy)

    def _time(self, scan: Callable[[str], object], chars: int) -> LatencySummary:
        return time_scans(scan, self._texts_by_chars[chars], self._iterations, self._warmup)

    def _measure_scanners(self, section: Section, whole: ScannerChain, chars: int) -> list[Measurement]:
        measurements = [
            Measurement(section, name, chars, self._time(chain.scan, chars))
            for name, chain in single_scanner_chains(self._policy, section)
        ]
        measurements.append(Measurement(section, WHOLE_CHAIN, chars, self._time(whole.scan, chars)))
        return measurements

    def measure_input(self) -> list[Measurement]:
        """Time each input scanner alone, the whole chain, and the whole chain through `scan_async`, as safety runs it."""
        measurements = []
        for chars, texts in self._texts_by_chars.items():
            measurements += self._measure_scanners("input", self.input_chain, chars)
            in_thread = time_async_scans(self.input_chain.scan_async, texts, self._iterations, self._warmup)
            measurements.append(Measurement("input", "whole chain, `scan_async` (worker thread)", chars, in_thread))
        return measurements

    def measure_output(self) -> list[Measurement]:
        """Time each output scanner alone, the whole chain (end of generation) and its streaming part."""
        measurements = []
        streaming = self.output_chain.streaming()
        streaming_name = f"streaming part ({', '.join(streaming.names)})"
        for chars in self._texts_by_chars:
            measurements += self._measure_scanners("output", self.output_chain, chars)
            measurements.append(Measurement("output", streaming_name, chars, self._time(streaming.scan, chars)))
        return measurements


def dominant_scanner_note(policy: Policy, measurements: list[Measurement]) -> str | None:
    """Return a note when one input scanner's p50 is at least `DOMINANT_SHARE` of the whole chain's on the longest text."""
    longest = max(TEXT_CHARS)
    whole = next(m for m in measurements if m.chars == longest and m.scanner == WHOLE_CHAIN)
    labels = {spec.label: spec.type for spec in policy.input}
    singles = [m for m in measurements if m.chars == longest and m.scanner in labels]
    top = max(singles, key=lambda m: m.summary.p50_ns)
    share = top.summary.p50_ns / whole.summary.p50_ns
    if share < DOMINANT_SHARE:
        return None
    note = (
        f"On {longest:,} characters {top.scanner} alone has a p50 of {format_ms(top.summary.p50_ns)} ms, "
        f"against {format_ms(whole.summary.p50_ns)} ms for the whole input chain."
    )
    if labels[top.scanner] == "Secrets":
        note += (
            " llm-guard 0.3.16's Secrets scanner writes each prompt to a temporary file and switches "
            "detect-secrets' settings around every scan, which clears and reloads its plugins."
        )
    return note


def measurement_row(measurement: Measurement) -> list[str]:
    summary = measurement.summary
    p50, p99 = format_ms(summary.p50_ns), format_ms(summary.p99_ns)
    return [measurement.chain, measurement.scanner, f"{measurement.chars:,}", p50, p99]


def skipped_section(command: str, reason: str) -> BenchSection:
    return BenchSection(
        title=TITLE,
        command=command,
        headers=list(HEADERS),
        notes=[f"Skipped: {reason}"],
    )


def run(quick: bool) -> BenchSection:
    """Build both chains from the shipped policy and time every scanner on 200- and 2,000-character texts."""
    command = COMMAND + (" --quick" if quick else "")
    if not PROMPTS_DIR.is_dir():
        return skipped_section(command, f"the prompt folder {PROMPTS_DIR} does not exist.")

    configure_logging("bench", SERVICE_LOG_LEVEL)
    configure_scanner_runtime()
    texts = load_benign_texts(PROMPTS_DIR)
    texts_by_chars = {chars: texts_of_length(texts, chars, TEXTS_PER_SIZE) for chars in TEXT_CHARS}
    iterations, warmup = (QUICK_ITERATIONS, QUICK_WARMUP) if quick else (FULL_ITERATIONS, FULL_WARMUP)
    policy = load_policy(SHIPPED_POLICY)
    benchmark = ScreeningBenchmark(policy, texts_by_chars, iterations, warmup)

    input_measurements = benchmark.measure_input()
    output_measurements = benchmark.measure_output()
    notes = [
        f"{iterations:,} timed scans per row after {warmup} untimed ones, cycling through {TEXTS_PER_SIZE} "
        f"texts per size. Each text joins benign prompts from {' and '.join(PROMPT_FILES)} and cuts them to size. "
        "The output rows use the same texts as stand-ins for model output.",
        "A scanner alone runs as a one-scanner chain, so its row includes the chain's own overhead "
        "(a process-wide lock and one verdict object per scanner).",
        "`scan_async` is how the safety and moderation services call a chain: the scan runs in a worker "
        "thread, so its row adds the thread handoff.",
        "The streaming part is what moderation runs on each new window of output (the unreleased text "
        f"plus the last {benchmark.output_chain.holdback_chars} characters). A real window is usually "
        "shorter than these texts.",
    ]
    notes += blocked_notes(benchmark, texts_by_chars)
    dominant = dominant_scanner_note(policy, input_measurements)
    if dominant:
        notes.append(dominant)

    return BenchSection(
        title=TITLE,
        command=command,
        headers=list(HEADERS),
        rows=[measurement_row(m) for m in input_measurements + output_measurements],
        baseline="each scanner alone beside its whole chain, on the same texts in the same run.",
        notes=notes,
    )


def blocked_notes(benchmark: ScreeningBenchmark, texts_by_chars: dict[int, list[str]]) -> list[str]:
    """Return a note for each chain that blocked any benchmark text: such rows time a blocking verdict."""
    notes = []
    for chain_name, chain in (("input", benchmark.input_chain), ("output", benchmark.output_chain)):
        for chars, texts in texts_by_chars.items():
            counts = blocked_count(chain, texts)
            if counts:
                found = ", ".join(f"{scanner} {count}" for scanner, count in sorted(counts.items()))
                texts_name = f"{len(texts)} {chars:,}-character texts"
                notes.append(f"The {chain_name} chain blocked some of the {texts_name}: {found}.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ITERATIONS} scans per row instead of {FULL_ITERATIONS}"
    )
    print(run(quick=parser.parse_args().quick).to_markdown())


if __name__ == "__main__":
    main()
