"""Screening cost: each scanner of the shipped policy alone, and each whole chain, on benign text of two sizes.

The input chain is built as the safety service builds it and the output
chain as the moderation service builds it (`load_policy`, then
`build_input_chain` / `build_output_chain`). A scanner alone is timed as a
one-scanner chain built from its own policy entry, so every row pays the same
chain overhead. The output rows also time the chain's streaming part, which
moderation runs on each new window of output. One more input row times
llm-guard 0.3.16's own Secrets scanner, which the policy's Secrets entry
replaced, on the same texts.

Run alone: `python -m load_tests.bench_screening [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from load_tests.latency import LatencySummary, format_ms, summarize, time_sequential
from load_tests.report import BenchSection
from shared.scanning import (
    ChainResult,
    Policy,
    PolicyScanner,
    ScannerChain,
    build_input_chain,
    build_output_chain,
    load_policy,
)
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
HEADERS = ["chain", "scanner", "prompt chars", "p50 ms", "p99 ms", "CPU p50 ms", "CPU p99 ms"]
WHOLE_CHAIN = "whole chain"
LLM_GUARD_SECRETS = "llm-guard 0.3.16's own Secrets scanner (replaced, not in the chain)"
# The services' default log level. llm-guard logs every scan at debug through
# structlog, which prints everything until configured, so timing without the
# services' level filter would time the printing.
SERVICE_LOG_LEVEL: str = Settings.model_fields["log_level"].default


Section = Literal["input", "output"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Percentiles of one timed loop: wall-clock time per scan, and process CPU time per scan.

    CPU time leaves out the time the process waited for a core, which other
    work on a shared machine adds to the wall-clock tail.
    """

    wall: LatencySummary
    cpu: LatencySummary


@dataclasses.dataclass(frozen=True)
class Measurement:
    chain: Section
    scanner: str
    chars: int
    timing: Timing


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


def time_scans(scan: Callable[[str], object], texts: list[str], iterations: int, warmup: int) -> Timing:
    """Time `scan` on `texts` in turn, in the calling thread."""

    async def call(index: int) -> object:
        return scan(texts[index % len(texts)])

    return _timed(call, iterations, warmup)


def time_async_scans(scan: Callable[[str], Awaitable[object]], texts: list[str], iterations: int, warmup: int) -> Timing:
    """Time the coroutine `scan` on `texts` in turn, on a new event loop."""

    async def call(index: int) -> object:
        return await scan(texts[index % len(texts)])

    return _timed(call, iterations, warmup)


def _timed(call: Callable[[int], Awaitable[object]], iterations: int, warmup: int) -> Timing:
    """Run `time_sequential` on `call` and also take the process CPU time of each timed call."""
    cpu_ns: list[int] = []

    async def measured_call(index: int) -> object:
        # Process CPU time also counts a worker thread's, which `scan_async` uses.
        started_ns = time.process_time_ns()
        result = await call(index)
        cpu_ns.append(time.process_time_ns() - started_ns)
        return result

    wall = asyncio.run(time_sequential(measured_call, iterations, warmup))
    return Timing(wall=wall, cpu=summarize(cpu_ns[warmup:], wall.elapsed_ns))


def single_scanner_chains(policy: Policy, section: Section) -> list[tuple[str, ScannerChain]]:
    """Build one chain per entry of the policy's `section`, each holding that entry alone."""
    specs = policy.input if section == "input" else policy.output
    build = build_input_chain if section == "input" else build_output_chain
    return [(spec.label, build(dataclasses.replace(policy, **{section: (spec,)}))) for spec in specs]


def llm_guard_secrets_chain(policy: Policy) -> ScannerChain | None:
    """Build a one-scanner chain of llm-guard's own Secrets scanner with the options of the policy's Secrets entry.

    Returns None when the policy has no Secrets entry.
    """
    spec = next((spec for spec in policy.input if spec.type == "Secrets"), None)
    if spec is None:
        return None

    from llm_guard.input_scanners import Secrets

    scanner = Secrets(**spec.options.model_dump())
    return ScannerChain([PolicyScanner(name=LLM_GUARD_SECRETS, action=spec.action, reason="", scan=scanner.scan, max_match_chars=None)])


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
        self.replaced_secrets_chain = llm_guard_secrets_chain(policy)

    def _time(self, scan: Callable[[str], object], chars: int) -> Timing:
        return time_scans(scan, self._texts_by_chars[chars], self._iterations, self._warmup)

    def _measure_scanners(self, section: Section, whole: ScannerChain, chars: int) -> list[Measurement]:
        measurements = [
            Measurement(section, name, chars, self._time(chain.scan, chars))
            for name, chain in single_scanner_chains(self._policy, section)
        ]
        measurements.append(Measurement(section, WHOLE_CHAIN, chars, self._time(whole.scan, chars)))
        return measurements

    def measure_input(self) -> list[Measurement]:
        """Time each input scanner alone, the whole chain, and the whole chain through `scan_async`, as safety runs it.

        Also times llm-guard's own Secrets scanner, when the policy has a Secrets entry.
        """
        measurements = []
        for chars, texts in self._texts_by_chars.items():
            measurements += self._measure_scanners("input", self.input_chain, chars)
            in_thread = time_async_scans(self.input_chain.scan_async, texts, self._iterations, self._warmup)
            measurements.append(Measurement("input", "whole chain, `scan_async` (worker thread)", chars, in_thread))
            if self.replaced_secrets_chain is not None:
                replaced = self._time(self.replaced_secrets_chain.scan, chars)
                measurements.append(Measurement("input", LLM_GUARD_SECRETS, chars, replaced))
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
    labels = {spec.label for spec in policy.input}
    singles = [m for m in measurements if m.chars == longest and m.scanner in labels]
    top = max(singles, key=lambda m: m.timing.wall.p50_ns)
    share = top.timing.wall.p50_ns / whole.timing.wall.p50_ns
    if share < DOMINANT_SHARE:
        return None
    return (
        f"On {longest:,} characters {top.scanner} alone has a p50 of {format_ms(top.timing.wall.p50_ns)} ms, "
        f"against {format_ms(whole.timing.wall.p50_ns)} ms for the whole input chain."
    )


def measurement_row(measurement: Measurement) -> list[str]:
    wall, cpu = measurement.timing.wall, measurement.timing.cpu
    percentiles = [format_ms(wall.p50_ns), format_ms(wall.p99_ns), format_ms(cpu.p50_ns), format_ms(cpu.p99_ns)]
    return [measurement.chain, measurement.scanner, f"{measurement.chars:,}", *percentiles]


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
        "(one verdict object per scanner).",
        "The policy's Secrets entry is Sluice's own scanner (`shared/scanning/secrets.py`), with llm-guard's "
        "contract and plugin set. The row of llm-guard's own Secrets scanner, which writes each prompt to a "
        "temporary file and re-creates detect-secrets' 112 plugins around every scan, times what it replaced.",
        "`scan_async` is how the safety and moderation services call a chain: the scan runs in a worker "
        "thread, so its row adds the thread handoff.",
        "The CPU columns are the process CPU time of each scan, which leaves out time spent waiting for a "
        "core. Where the wall-clock p99 is far above the CPU p99, other work on the machine caused the tail.",
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
