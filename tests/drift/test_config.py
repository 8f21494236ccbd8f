"""Drift settings: defaults, environment variables and validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.drift.config import DriftSettings


def test_defaults_raise_within_two_windows() -> None:
    settings = DriftSettings()

    assert settings.raise_after_windows <= 2
    assert settings.window_min_samples >= 1000


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_DRIFT_WINDOW_MIN_SAMPLES", "5000")

    assert DriftSettings().window_min_samples == 5000


def test_folds_above_window_size_rejected() -> None:
    with pytest.raises(ValidationError, match="domain_classifier_folds"):
        DriftSettings(window_min_samples=3, domain_classifier_folds=5)


def test_roc_auc_threshold_must_exceed_chance() -> None:
    with pytest.raises(ValidationError, match="roc_auc_threshold"):
        DriftSettings(roc_auc_threshold=0.5)


def test_folds_above_embedding_sample_rejected() -> None:
    with pytest.raises(ValidationError, match="embedding_samples_per_window"):
        DriftSettings(embedding_samples_per_window=3, domain_classifier_folds=5)
