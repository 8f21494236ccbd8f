"""Tuning of the drift service, from `SLUICE_DRIFT_*` environment variables.

The defaults keep false alarms rare at the window sizes below. Under no
shift, PSI over 10 bins averages about (bins - 1) * (1/n_reference +
1/n_current), because n * PSI then follows a chi-square distribution with
bins - 1 degrees of freedom. That is 0.18 for two windows of 100 samples and
0.014 for 2,000 against 1,000. A classifier that cannot tell two windows
apart has a ROC AUC with the null variance of the Mann-Whitney U statistic,
(n1 + n2 + 1) / (12 * n1 * n2). Its standard deviation is 0.04 at 100
against 100 and 0.013 at 1,000 against 1,000, the embedding rows it trains
on per window (cross-validation adds noise to that, see
DEFAULT_EMBEDDING_SAMPLES_PER_WINDOW).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A window is compared only on a scheduled evaluation, so an alert comes at
# most one interval after its second firing window filled. An evaluation
# costs little (the domain classifier, the most expensive statistic, took
# 0.15 s of CPU per variant on its 1,000 against 1,000 rows), so 5 minutes
# keeps that delay short at little cost.
DEFAULT_SCHEDULE_INTERVAL_S = 300.0
# The minimum-sample rule: a (variant, signal) window is compared only once
# it contains this many samples, and one with fewer keeps collecting over later
# evaluations. At 1,000 samples the no-shift PSI (about 0.014) is a tenth of
# the 0.2 threshold. The ROC AUC noise depends on the embedding sample
# instead (see DEFAULT_EMBEDDING_SAMPLES_PER_WINDOW).
DEFAULT_WINDOW_MIN_SAMPLES = 1_000
# The first window of a (variant, signal) to reach this many samples is
# frozen as its reference. Twice the current window halves the reference's
# share of the noise, and it is collected only once.
DEFAULT_REFERENCE_MIN_SAMPLES = 2_000
# The false-alarm rate of one evaluation across all its p-value tests
# (KS and rate tests, every signal of every variant). Bonferroni's rule
# splits it evenly, so each test runs at
# family_alpha / (number of p-value tests in the evaluation).
DEFAULT_FAMILY_ALPHA = 0.05
# PSI's usual binning: ten bins, each holding a tenth of the reference.
DEFAULT_PSI_BINS = 10
# The credit-scoring rule of thumb reads PSI below 0.1 as no change, 0.1 to
# 0.2 as a moderate change and above 0.2 as a significant shift (some tools,
# such as Alibaba PAI, put the upper band at 0.25). The alarm takes the
# upper band, because a numeric signal must also pass the KS test.
DEFAULT_PSI_THRESHOLD = 0.2
# Evidently's default for its domain-classifier embedding drift method.
DEFAULT_ROC_AUC_THRESHOLD = 0.55
# scikit-learn's default fold count for cross-validation.
DEFAULT_DOMAIN_CLASSIFIER_FOLDS = 5
# Prompt embeddings per window that the source reads from the store and the
# domain classifier trains on. The store counts and sums every request's
# embedding for the centroid, so only this sample of rows crosses the bus.
# Fewer rows make the ROC AUC noisier than the Mann-Whitney figure above,
# because cross-validation adds the classifier's own fitting noise. Over 150
# no-shift draws of the drift benchmark's everyday traffic (a 2,000-request
# reference against a 1,000-request window), its standard deviation was
# 0.024 at 500 rows per window and 1.3% of windows passed 0.55. At 1,000
# rows it was 0.0175 and none passed. More rows cost bytes: a row of 384
# float32 values is about 2,070 bytes of JSON, so 1,000 rows are about 2.1 MB,
# three store API replies of at most 830 KB. The five folds took 0.15 s of
# CPU at 1,000 against 1,000 rows (two cores).
DEFAULT_EMBEDDING_SAMPLES_PER_WINDOW = 1_000
# Hysteresis. An alert is raised after this many consecutive firing windows,
# so a single noisy window never raises one, and a shift that fires from
# its first window raises one on its second.
# NOTE: a shift that starts inside a window may leave that window quiet, and
# then the alert comes on the third window that contains shifted traffic.
DEFAULT_RAISE_AFTER_WINDOWS = 2
# An alert is resolved after this many consecutive quiet windows. Resolving
# needs more evidence than raising, so a shift near the threshold does not
# flap between the two.
DEFAULT_RESOLVE_AFTER_WINDOWS = 3
# The maximum number of samples that one read of a (variant, signal) time range returns. A
# range with more requests is sampled down to this many, so a busy hour or a
# backlog after a restart travels as at most this many rows of the store
# API (its pages contain up to 10,000). Five times the current window's minimum
# keeps every window within one read, and beyond a few thousand samples the
# PSI noise hardly shrinks (0.014 at 2,000 against 1,000).
DEFAULT_MAX_SAMPLES_PER_READ = 5_000
# Off by default, as the telemetry service's metrics endpoint is: every
# replica, the embedded stack and each test process would otherwise contend
# for one fixed port on the host. Set a port to serve `/metrics`.
DEFAULT_METRICS_PORT = 0


class DriftSettings(BaseSettings):
    """Schedule, window sizes, thresholds and hysteresis of one drift process.

    Every field reads the environment variable `SLUICE_DRIFT_<FIELD NAME>`.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_DRIFT_", extra="ignore")

    schedule_interval_s: float = Field(default=DEFAULT_SCHEDULE_INTERVAL_S, gt=0)
    window_min_samples: int = Field(default=DEFAULT_WINDOW_MIN_SAMPLES, ge=1)
    reference_min_samples: int = Field(default=DEFAULT_REFERENCE_MIN_SAMPLES, ge=1)
    family_alpha: float = Field(default=DEFAULT_FAMILY_ALPHA, gt=0, lt=1)
    psi_bins: int = Field(default=DEFAULT_PSI_BINS, ge=2)
    psi_threshold: float = Field(default=DEFAULT_PSI_THRESHOLD, gt=0)
    roc_auc_threshold: float = Field(default=DEFAULT_ROC_AUC_THRESHOLD, gt=0.5, lt=1)
    domain_classifier_folds: int = Field(default=DEFAULT_DOMAIN_CLASSIFIER_FOLDS, ge=2)
    embedding_samples_per_window: int = Field(default=DEFAULT_EMBEDDING_SAMPLES_PER_WINDOW, ge=1)
    raise_after_windows: int = Field(default=DEFAULT_RAISE_AFTER_WINDOWS, ge=1)
    resolve_after_windows: int = Field(default=DEFAULT_RESOLVE_AFTER_WINDOWS, ge=1)
    max_samples_per_read: int = Field(default=DEFAULT_MAX_SAMPLES_PER_READ, ge=1)
    # The HTTP port of `/metrics` on `Settings.host`, or 0 to turn the endpoint off.
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)

    @model_validator(mode="after")
    def _check_folds_fit_windows(self) -> DriftSettings:
        # Stratified cross-validation needs at least one row of each window in every fold.
        smallest = min(self.window_min_samples, self.reference_min_samples, self.embedding_samples_per_window)
        if smallest < self.domain_classifier_folds:
            raise ValueError(
                f"domain_classifier_folds ({self.domain_classifier_folds}) exceeds the smallest window "
                f"({smallest} rows, the least of window_min_samples, reference_min_samples and "
                f"embedding_samples_per_window). Lower the fold count or raise the window sizes"
            )
        return self
