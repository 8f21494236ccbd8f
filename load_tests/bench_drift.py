"""Drift detection: how many windows a shift takes to raise an alert, and how often traffic without a shift raises one.

Every scenario runs through the real `Detector` with the shipped
`DriftSettings` defaults, on synthetic traffic from `load_tests.drift_traffic`:
prompt lengths and embeddings from the labelled prompt files, and drawn
output lengths, scanner scores and rates. Each seed freezes its own
reference and draws its own windows, so the seeds are independent runs.

Run alone: `python -m load_tests.bench_drift [--quick]`.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from load_tests.drift_traffic import EVERYDAY_FILES, PROMPTS_DIR, PromptPool, Traffic, evaluate_windows, load_prompt_texts
from load_tests.report import BenchSection, BenchTable
from services.drift.alarms import AlertStatus
from services.drift.config import DriftSettings
from services.drift.detector import DriftReport, Outcome
from shared.drift_signals import Signal

COMMAND = "python -m load_tests.bench_drift"
TITLE = "Drift detection: delay and false alarms"
HEADERS = [
    "scenario",
    "expected signal",
    "seeds",
    "delay p50 (windows)",
    "delay max (windows)",
    "alerted within 2 windows",
    "first alert named the expected signal",
    "false alerts on other signals",
]
NO_SHIFT_HEADERS = [
    "seeds",
    "windows",
    "alerts per 100 windows",
    "signals that alerted",
    "single-window fires per 100 windows",
    "signals that fired",
]

# Ten seeds per scenario take about 100 s of CPU in all (2 cores, AMD EPYC), about 30 s
# of it embedding the prompts. A quick run's 3 seeds take about 50 s.
FULL_SEEDS = 10
QUICK_SEEDS = 3
# Windows per no-shift seed. Each pair of neighbouring windows is one chance for noise to
# raise an alert, so 20 windows give 19 chances per seed.
NO_SHIFT_WINDOWS = 20
# One window of everyday traffic before the shift, so a false alert there is counted too.
PRE_SHIFT_WINDOWS = 1
# Shifted windows per seed. The shipped hysteresis raises an alert on the
# second firing window, so 2 is the fastest possible delay. A seed with no
# alert after this many shifted windows is reported as "> SHIFTED_WINDOWS".
SHIFTED_WINDOWS = 5
# The goal: an alert by the second shifted window, the fastest the shipped hysteresis allows.
DETECTION_GOAL_WINDOWS = 2
# One variant per run, as in a deployment without an experiment.
VARIANT = "control"
# Scenario n draws from seeds n * SEED_STRIDE onwards, so no two scenarios share draws
# while the seeds per scenario stay below SEED_STRIDE.
SEED_STRIDE = 1_000
PROMPT_SIGNALS = frozenset({Signal.PROMPT_CHARS, Signal.PROMPT_EMBEDDING})


@dataclass(frozen=True)
class Scenario:
    """A change of traffic at a known window, and the signals an alert on it should name."""

    name: str
    expected: frozenset[Signal]
    # The function that builds the shifted traffic from the everyday traffic and the prompt pool of each kind.
    shift: Callable[[Traffic, dict[str, PromptPool]], Traffic]


SCENARIOS = (
    Scenario(
        "prompt mix to injections",
        PROMPT_SIGNALS,
        lambda everyday, pools: everyday.with_changes(prompts=pools["injection"]),
    ),
    Scenario(
        "prompt mix to code",
        PROMPT_SIGNALS,
        lambda everyday, pools: everyday.with_changes(prompts=pools["code"]),
    ),
    Scenario(
        "output length collapse (median 600 to 40 chars)",
        frozenset({Signal.OUTPUT_CHARS}),
        lambda everyday, pools: everyday.with_changes(output_median_chars=40.0),
    ),
    Scenario(
        "refusal rate 5% to 15%",
        frozenset({Signal.REFUSAL_RATE}),
        lambda everyday, pools: everyday.with_changes(refusal_rate=0.15),
    ),
)


@dataclass(frozen=True)
class FalseAlert:
    """An alert on a signal the scenario leaves unchanged, or any alert before the shift."""

    seed: int
    # Counted from the shift: 1 is the first shifted window, and 0 or less is before the shift.
    window: int
    signal: Signal


@dataclass(frozen=True)
class ShiftRun:
    """The outcome of one seed of a shift scenario."""

    # The shifted window whose evaluation first raised an alert on an expected
    # signal, or None when none did within SHIFTED_WINDOWS.
    delay_windows: int | None
    first_alert_expected: bool
    false_alerts: list[FalseAlert]


def raised_signals(report: DriftReport) -> list[Signal]:
    """Return the signals whose alert this evaluation raised."""
    return [alert.signal for alert in report.alerts if alert.status is AlertStatus.FIRING]


def fired_signals(report: DriftReport) -> list[Signal]:
    """Return the signals whose window fired on its own, before the hysteresis."""
    return [result.signal for result in report.results if result.outcome is Outcome.FIRED]


def run_shift(scenario: Scenario, everyday: Traffic, pools: dict[str, PromptPool], seed: int) -> ShiftRun:
    """Run one seed of `scenario`: everyday windows first, then shifted ones."""
    shifted = scenario.shift(everyday, pools)
    windows = [everyday] * PRE_SHIFT_WINDOWS + [shifted] * SHIFTED_WINDOWS
    reports = evaluate_windows(DriftSettings(), everyday, windows, variants=(VARIANT,), seed=seed)

    # Window numbers count from the shift, so the first shifted window is 1.
    raised = [(number, raised_signals(report)) for number, report in enumerate(reports, start=1 - PRE_SHIFT_WINDOWS)]
    expected = [(number, signals) for number, signals in raised if number >= 1 and scenario.expected & set(signals)]
    first_alert = next((number for number, signals in raised if signals), None)
    false_alerts = [
        FalseAlert(seed, number, signal)
        for number, signals in raised
        for signal in signals
        if number < 1 or signal not in scenario.expected
    ]
    return ShiftRun(
        delay_windows=expected[0][0] if expected else None,
        first_alert_expected=bool(expected) and first_alert == expected[0][0],
        false_alerts=false_alerts,
    )


def format_counts(counts: Counter[Signal]) -> str:
    """Return `signal xN` pairs, most frequent first, or `none`."""
    if not counts:
        return "none"
    return ", ".join(f"{signal} x{count}" for signal, count in counts.most_common())


def format_delay(delay_windows: float) -> str:
    return f"> {SHIFTED_WINDOWS}" if np.isinf(delay_windows) else f"{delay_windows:g}"


def shift_row(scenario: Scenario, runs: list[ShiftRun]) -> list[str]:
    """Return the table row of one scenario over all its seeds."""
    # A seed that never alerted counts as an infinite delay, so the median reads "> N" once half the seeds missed.
    delays = np.array([np.inf if run.delay_windows is None else run.delay_windows for run in runs], dtype=np.float64)
    within_goal = sum(1 for delay in delays if delay <= DETECTION_GOAL_WINDOWS)
    named = sum(1 for run in runs if run.first_alert_expected)
    false_alerts = Counter(alert.signal for run in runs for alert in run.false_alerts)
    return [
        scenario.name,
        " or ".join(sorted(scenario.expected)),
        str(len(runs)),
        format_delay(float(np.median(delays))),
        format_delay(float(delays.max())),
        f"{within_goal}/{len(runs)}",
        f"{named}/{len(runs)}",
        format_counts(false_alerts),
    ]


def no_shift_row(everyday: Traffic, seeds: list[int]) -> list[str]:
    """Run `NO_SHIFT_WINDOWS` windows of unchanged traffic per seed and return the row of alert and fire counts."""
    alerts: Counter[Signal] = Counter()
    fires: Counter[Signal] = Counter()
    for seed in seeds:
        windows = [everyday] * NO_SHIFT_WINDOWS
        for report in evaluate_windows(DriftSettings(), everyday, windows, variants=(VARIANT,), seed=seed):
            alerts.update(raised_signals(report))
            fires.update(fired_signals(report))
    window_count = len(seeds) * NO_SHIFT_WINDOWS
    return [
        str(len(seeds)),
        str(window_count),
        f"{100.0 * sum(alerts.values()) / window_count:.1f}",
        format_counts(alerts),
        f"{100.0 * sum(fires.values()) / window_count:.1f}",
        format_counts(fires),
    ]


def embed_texts(texts: list[str]) -> dict[str, np.ndarray]:
    """Return the telemetry service's prompt embedding of each distinct text."""
    from services.telemetry.prompt_embeddings import embed_prompts

    distinct = sorted(set(texts))
    return {text: np.asarray(row, dtype=np.float32) for text, row in zip(distinct, embed_prompts(distinct), strict=True)}


def prompt_pools(texts: dict[str, list[str]], embeddings: dict[str, np.ndarray]) -> dict[str, PromptPool]:
    return {kind: PromptPool.of(kind_texts, embeddings) for kind, kind_texts in texts.items()}


def skipped_section(command: str, reason: str) -> BenchSection:
    return BenchSection(TITLE, command, list(HEADERS), notes=[f"Skipped: {reason}"])


def false_alert_notes(runs_by_scenario: list[tuple[Scenario, list[ShiftRun]]]) -> list[str]:
    """Return one note per false alert of a shift scenario, with the seed and window that reproduce it."""
    return [
        f"False alert in \"{scenario.name}\": seed {alert.seed}, window {alert.window} counted from the shift, "
        f"on {alert.signal}."
        for scenario, runs in runs_by_scenario
        for run in runs
        for alert in run.false_alerts
    ]


def method_notes(texts: dict[str, list[str]], no_shift_windows: int) -> list[str]:
    """Return the notes on how the figures were measured."""
    settings = DriftSettings()
    return [
        f"Shipped `DriftSettings` defaults: a {settings.reference_min_samples:,}-sample reference, windows of "
        f"{settings.window_min_samples:,} samples, family alpha {settings.family_alpha}, and an alert after "
        f"{settings.raise_after_windows} consecutive firing windows. One variant, with every signal of "
        "`shared/drift_signals.py` compared in each window.",
        f"Everyday traffic: {len(texts['everyday'])} prompts from {', '.join(EVERYDAY_FILES)}. The prompt mix "
        f"scenarios switch to {len(texts['injection'])} injection prompts or the {len(texts['code'])} "
        f"programming prompts among the everyday ones, from {PROMPTS_DIR.name}/.",
        f"Each shift seed runs {PRE_SHIFT_WINDOWS} window of everyday traffic, then {SHIFTED_WINDOWS} shifted "
        "windows. Delay: the shifted window (1 is the first) whose evaluation raised an alert on an expected "
        f"signal. The hysteresis makes {settings.raise_after_windows} the minimum. Delay p50 and max are over "
        "seeds. A false alert is one on a signal the scenario leaves unchanged, or any alert before the shift.",
        f"No shift: {NO_SHIFT_WINDOWS} windows per seed. A single-window fire is a window whose statistics all "
        f"crossed their thresholds. The hysteresis needs {settings.raise_after_windows} in a row to raise an alert.",
        # Rule of three: with no event in n trials, 3 / n is the 95% upper confidence bound on the event rate.
        f"Resolution: when none of the {no_shift_windows} no-shift windows alerts or fires, the 95% upper bound "
        f"on that rate is {300.0 / no_shift_windows:.1f} per 100 windows (the rule of three).",
    ]


def run(quick: bool) -> BenchSection:
    """Run the no-shift scenario and every shift scenario over several seeds."""
    command = COMMAND + (" --quick" if quick else "")
    if not PROMPTS_DIR.is_dir():
        return skipped_section(command, f"the prompt folder {PROMPTS_DIR} does not exist.")
    seed_count = QUICK_SEEDS if quick else FULL_SEEDS

    texts = load_prompt_texts()
    cpu_started_s = time.process_time()
    embeddings = embed_texts([text for kind_texts in texts.values() for text in kind_texts])
    pools = prompt_pools(texts, embeddings)
    embed_cpu_s = time.process_time() - cpu_started_s
    everyday = Traffic(prompts=pools["everyday"])

    no_shift = no_shift_row(everyday, list(range(seed_count)))
    runs_by_scenario = []
    for number, scenario in enumerate(SCENARIOS, start=1):
        seeds = range(number * SEED_STRIDE, number * SEED_STRIDE + seed_count)
        runs_by_scenario.append((scenario, [run_shift(scenario, everyday, pools, seed) for seed in seeds]))
    detect_cpu_s = time.process_time() - cpu_started_s - embed_cpu_s

    cpu_note = (
        f"Embedding the {len(embeddings)} distinct prompts (all-MiniLM-L6-v2 through the telemetry service's "
        f"embedder, once per run and kept in memory) took {embed_cpu_s:.0f} s of CPU. The detector runs took "
        f"{detect_cpu_s:.0f} s of CPU."
    )
    return BenchSection(
        title=TITLE,
        command=command,
        headers=list(HEADERS),
        rows=[shift_row(scenario, runs) for scenario, runs in runs_by_scenario],
        baseline="the no-shift runs below, on the same everyday traffic and settings in the same run.",
        tables=[BenchTable("No shift: false alarms", list(NO_SHIFT_HEADERS), [no_shift])],
        notes=[
            *method_notes(texts, seed_count * NO_SHIFT_WINDOWS),
            *false_alert_notes(runs_by_scenario),
            cpu_note,
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds per scenario instead of {FULL_SEEDS}")
    print(run(quick=parser.parse_args().quick).to_markdown())


if __name__ == "__main__":
    main()
