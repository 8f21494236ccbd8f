"""Smooth weighted round-robin: which tenant's request an endpoint pool admits next.

The algorithm is the smooth weighted round-robin that nginx's upstream
module uses to pick a server. Each tenant with
waiting work has a running credit. On each turn every candidate's credit
grows by its weight, the candidate with the most credit wins, and the
winner's credit drops by the sum of the candidates' weights. While the same
tenants wait, tenant t wins the share weight(t) / (sum of their weights) of
the turns. Its wins are spread out rather than bunched: with weights 3 and 1
the order is a, a, b, a, and then it repeats.

A tenant that stops waiting loses its credit, so a tenant that was idle
cannot come back with a burst of banked turns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# A tenant missing from the weights gets one turn for every turn of another
# tenant of weight 1, so tenants share a pool equally unless configured.
DEFAULT_TENANT_WEIGHT = 1


class WeightedTurn:
    """Chooses the next tenant among those with waiting work, in proportion to their weights.

    Not thread-safe. The admission loop of one pool calls it from a single task.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        invalid = {tenant: weight for tenant, weight in weights.items() if weight < 1}
        if invalid:
            raise ValueError(f"tenant weights must be whole numbers of at least 1, got {invalid}")
        self._weights = dict(weights)
        self._credits: dict[str, int] = {}

    def weight_of(self, tenant: str) -> int:
        return self._weights.get(tenant, DEFAULT_TENANT_WEIGHT)

    def choose(self, candidates: Sequence[str]) -> str:
        """Return the tenant whose request goes next. A tie goes to the earlier candidate.

        Raises `ValueError` when `candidates` is empty.
        """
        if not candidates:
            raise ValueError("no tenant has waiting work to choose from")
        self._credits = {tenant: self._credits.get(tenant, 0) + self.weight_of(tenant) for tenant in candidates}
        chosen = max(candidates, key=self._credits.__getitem__)
        self._credits[chosen] -= sum(self.weight_of(tenant) for tenant in candidates)
        return chosen
