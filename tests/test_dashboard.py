"""The Grafana dashboard and the Prometheus scrape config under deploy/ match the metrics the services export."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.assignment.metrics import AssignmentMetrics
from services.drift.metrics import DriftMetrics
from services.inference.metrics import InferenceMetrics
from services.ingress.metrics import IngressMetrics
from services.moderation.metrics import ModerationMetrics
from services.safety.metrics import SafetyMetrics
from services.telemetry.metrics import TelemetryMetrics
from shared.settings import REPO_ROOT

DASHBOARD_FILE = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "sluice.json"
PROMETHEUS_FILE = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bsluice_[a-z0-9_]+\b")
# The series names prometheus-client writes for each metric type.
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
PANEL_TITLES = [
    "Requests by route and status",
    "Time to first token",
    "Generation duration",
    "Generations in flight",
    "Admission queue depth",
    "Screening verdicts",
    "Moderation verdicts",
    "Telemetry events written",
    "Telemetry consumer lag",
    "Drift alerts active",
]


def exported_series(registry: CollectorRegistry) -> set[str]:
    """Return every series name that `registry` exports, such as `x_bucket` for a histogram `x`."""
    names: set[str] = set()
    for family in registry.collect():
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def all_exported_series() -> set[str]:
    registries = [
        IngressMetrics().registry,
        SafetyMetrics().registry,
        AssignmentMetrics().registry,
        InferenceMetrics().registry,
        ModerationMetrics().registry,
        TelemetryMetrics().registry,
        DriftMetrics().registry,
    ]
    return set().union(*(exported_series(registry) for registry in registries))


def dashboard_expressions() -> list[tuple[str, str]]:
    """Return (panel title, PromQL expression) for every target of every panel."""
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_exported_series_found() -> None:
    # Guards the check below against an empty set, which would pass nothing.
    assert "sluice_inference_ttft_seconds_bucket" in all_exported_series()
    assert "sluice_telemetry_events_written_total" in all_exported_series()


@pytest.mark.parametrize(("title", "expression"), dashboard_expressions())
def test_panel_names_exported_metric(title: str, expression: str) -> None:
    names = METRIC_NAME.findall(expression)

    assert names, f"panel {title!r} names no sluice_ metric: {expression}"
    unknown = sorted(set(names) - all_exported_series())
    assert unknown == [], f"panel {title!r} names metrics that no service exports"


def test_dashboard_has_required_panels() -> None:
    titles = {title for title, _ in dashboard_expressions()}
    assert [title for title in PANEL_TITLES if title not in titles] == []


def test_panel_ids_unique() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {
        target.split(":")[0]
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {"ingress", "safety", "assignment", "inference", "moderation", "telemetry", "drift"}
