"""The domain classifier and centroid distance on fixed-seed embeddings."""

from __future__ import annotations

import numpy as np

from services.drift.embeddings import (
    CENTROID_COSINE_DISTANCE,
    DOMAIN_CLASSIFIER_ROC_AUC,
    centroid_cosine_distance,
    domain_classifier_roc_auc,
)


def unit_rows(count: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 32)) + offset
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_roc_auc_same_distribution_does_not_fire() -> None:
    result = domain_classifier_roc_auc(unit_rows(2000, 1), unit_rows(1000, 2), threshold=0.55, folds=5, max_rows=2000)

    assert result.name == DOMAIN_CLASSIFIER_ROC_AUC
    assert abs(result.value - 0.5) < 0.04
    assert not result.fired


def test_roc_auc_shifted_distribution_fires() -> None:
    result = domain_classifier_roc_auc(
        unit_rows(2000, 3), unit_rows(1000, 4, offset=0.2), threshold=0.55, folds=5, max_rows=2000
    )

    assert result.value > 0.7
    assert result.fired


def test_roc_auc_is_reproducible() -> None:
    reference = unit_rows(600, 5)
    current = unit_rows(600, 6, offset=0.05)

    first = domain_classifier_roc_auc(reference, current, threshold=0.55, folds=5, max_rows=500)
    second = domain_classifier_roc_auc(reference, current, threshold=0.55, folds=5, max_rows=500)

    assert first.value == second.value


def test_centroid_distance_is_context_only() -> None:
    reference = unit_rows(500, 7, offset=0.3)
    current = unit_rows(500, 8, offset=-0.3)

    result = centroid_cosine_distance(reference.mean(axis=0), current.mean(axis=0))

    assert result.name == CENTROID_COSINE_DISTANCE
    assert result.value > 1.0
    assert result.threshold is None
    assert not result.fired


def test_centroid_distance_same_rows_is_zero() -> None:
    centroid = unit_rows(500, 9, offset=0.3).mean(axis=0)

    assert abs(centroid_cosine_distance(centroid, centroid).value) < 1e-6


def test_centroid_distance_ignores_scale() -> None:
    centroid = unit_rows(500, 10, offset=0.3).mean(axis=0)

    assert abs(centroid_cosine_distance(centroid, 3.0 * centroid).value) < 1e-6
