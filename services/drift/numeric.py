"""Statistics for numeric signals: the two-sample Kolmogorov-Smirnov test and the population stability index (PSI).

The KS test shows whether a difference is statistically significant, but
with windows of thousands of samples it also rejects differences too small
to matter.
PSI measures how large the difference is and does not grow with the
sample count. The detector therefore fires a numeric signal only when
both fire. Evidently meets the same problem by switching from KS to the
Wasserstein distance above 1,000 reference samples
(https://docs-old.evidentlyai.com/reference/data-drift-algorithm).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from services.drift.results import Direction, StatisticResult

KS_P_VALUE = "ks_p_value"
PSI = "psi"

# A bin that is empty in one window would make its log ratio infinite, so
# each proportion is raised to at least this, one sample in 10,000. That is
# below what a window of 1,000 samples can resolve.
PSI_MIN_PROPORTION = 1e-4


def ks_test(reference: np.ndarray, current: np.ndarray, *, alpha: float) -> StatisticResult:
    """Run the two-sample KS test (scipy.stats.ks_2samp), which fires when the p-value is below `alpha`.

    `alpha` is the per-test level after the multiple-comparison correction.
    """
    p_value = stats.ks_2samp(reference, current).pvalue
    return StatisticResult.compare(KS_P_VALUE, p_value, alpha, Direction.BELOW)


def population_stability_index(
    reference: np.ndarray, current: np.ndarray, *, bins: int, threshold: float
) -> StatisticResult:
    """Compute PSI over `bins` bins cut at the reference's quantiles, which fires above `threshold`.

    PSI = sum over bins of (current share - reference share) * ln(current share / reference share).
    Quantile bins give every bin about the same reference share. Where many
    reference values tie (a score that is often exactly 0), quantiles
    coincide and the signal gets fewer, wider bins.
    """
    edges = _quantile_edges(reference, bins)
    reference_shares = _bin_shares(reference, edges)
    current_shares = _bin_shares(current, edges)
    value = np.sum((current_shares - reference_shares) * np.log(current_shares / reference_shares))
    return StatisticResult.compare(PSI, value, threshold, Direction.ABOVE)


def _quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    inner_quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(reference, inner_quantiles))


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side="right": each bin is closed on the left, [edge, next edge).
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.maximum(counts / len(values), PSI_MIN_PROPORTION)
