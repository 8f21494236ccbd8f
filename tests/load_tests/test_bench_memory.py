"""The memory benchmark's RSS sampler and its table, on this test process."""

from __future__ import annotations

import os
import time

from load_tests.bench_memory import QUICK_PLAN, RssSampler, _section
from load_tests.open_loop import LoadResult


def test_sampler_reads_own_rss() -> None:
    sampler = RssSampler({"tests": os.getpid()}, interval_s=0.01)

    sampler.start()
    time.sleep(0.1)
    sampler.stop()

    assert len(sampler.samples) >= 2
    assert all(rss["tests"] > 0 for _when, rss in sampler.samples)
    assert sampler.peak("tests") == max(rss["tests"] for _when, rss in sampler.samples)


def test_sampler_at_picks_first_later_sample() -> None:
    sampler = RssSampler({"a": 1}, interval_s=1.0)
    sampler.samples = [(0.0, {"a": 10}), (1.0, {"a": 20}), (2.0, {"a": 30})]

    assert sampler.at(0.5) == {"a": 20}
    assert sampler.at(9.0) == {"a": 30}


def test_growth_past_limit_not_flat() -> None:
    sampler = RssSampler({"steady": 1, "leaky": 2}, interval_s=1.0)
    mib = 1024 * 1024
    sampler.samples = [
        (0.0, {"steady": 100 * mib, "leaky": 100 * mib}),
        (QUICK_PLAN.baseline_after_s, {"steady": 100 * mib, "leaky": 100 * mib}),
        (QUICK_PLAN.run_s, {"steady": 105 * mib, "leaky": 150 * mib}),
    ]

    section = _section(LoadResult(rate_rps=1.0, duration_s=1.0), sampler, QUICK_PLAN, quick=True)

    rows = {row[0]: row for row in section.rows}
    assert rows["steady"][4:] == ["+5.0", "yes"]
    assert rows["leaky"][4:] == ["+50.0", "no"]
    assert rows["leaky"][3] == "150.0"
