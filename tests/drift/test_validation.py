"""Validation on real labelled prompts: no alert without a shift, and an alert naming the right signal within two windows of one.

Prompt lengths and embeddings come from the labelled prompt files, and
output lengths, scores and rates are drawn. Every scenario runs the default
settings: a 2,000-sample reference and windows of 1,000 samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.alarms import Alert, AlertStatus
from services.drift.config import DriftSettings
from shared.drift_signals import Signal
from tests.drift.traffic import PromptPool, Traffic, run_windows

NO_SHIFT_WINDOWS = 20
PROMPT_SIGNALS = {Signal.PROMPT_CHARS, Signal.PROMPT_EMBEDDING}


@pytest.fixture(scope="module")
def everyday(prompt_texts: dict[str, list[str]], prompt_embeddings: dict[str, np.ndarray]) -> Traffic:
    return Traffic(prompts=PromptPool.of(prompt_texts["everyday"], prompt_embeddings))


def alerted_signals(alerts: list[Alert]) -> set[Signal]:
    return {alert.signal for alert in alerts if alert.status is AlertStatus.FIRING}


def run_shift(everyday: Traffic, shifted: Traffic, seed: int) -> list[list[Alert]]:
    # One window before the shift, then two shifted windows.
    return run_windows(DriftSettings(), everyday, [everyday, shifted, shifted], variants=("control",), seed=seed)


def test_no_shift_raises_no_alert(everyday: Traffic) -> None:
    alerts = run_windows(
        DriftSettings(), everyday, [everyday] * NO_SHIFT_WINDOWS, variants=("control", "treatment"), seed=1
    )

    assert len(alerts) == NO_SHIFT_WINDOWS
    assert [alert for window in alerts for alert in window] == []


@pytest.mark.parametrize("kind", ["injection", "code"])
def test_prompt_mix_shift_alerts_on_prompts(
    everyday: Traffic, prompt_texts: dict[str, list[str]], prompt_embeddings: dict[str, np.ndarray], kind: str
) -> None:
    shifted = everyday.with_changes(prompts=PromptPool.of(prompt_texts[kind], prompt_embeddings))

    before, first, second = run_shift(everyday, shifted, seed=2)

    assert before == []
    assert first == []
    assert alerted_signals(second)
    assert alerted_signals(second) <= PROMPT_SIGNALS


def test_output_collapse_alerts_on_output_chars(everyday: Traffic) -> None:
    collapsed = everyday.with_changes(output_median_chars=40.0)

    before, first, second = run_shift(everyday, collapsed, seed=3)

    assert before == []
    assert first == []
    assert alerted_signals(second) == {Signal.OUTPUT_CHARS}


def test_refusal_rise_alerts_on_refusal_rate(everyday: Traffic) -> None:
    refusing = everyday.with_changes(refusal_rate=0.15)

    before, first, second = run_shift(everyday, refusing, seed=4)

    assert before == []
    assert first == []
    assert alerted_signals(second) == {Signal.REFUSAL_RATE}
