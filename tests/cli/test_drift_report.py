"""`sluice report drift`: the state table, the chart file and the option checks that run before any request."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from services.cli.drift_report import drift_table, write_chart
from services.cli.main import app
from shared.drift_reports import DriftPoint, DriftState

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def point(minutes: int, variant: str, value: float | None, alert_active: bool = False) -> DriftPoint:
    return DriftPoint(
        evaluated_at=T0 + timedelta(minutes=minutes),
        variant=variant,
        statistic="psi",
        value=value,
        threshold=0.2,
        alert_active=alert_active,
    )


POINTS = [point(0, "a", 0.01), point(0, "b", 0.02), point(5, "a", 0.03), point(5, "b", 1.4, alert_active=True)]


def test_chart_svg_has_line_per_variant(tmp_path: Path) -> None:
    path = tmp_path / "drift.svg"

    write_chart("output_chars", POINTS, path)

    root = ElementTree.parse(path).getroot()
    assert len(root.findall(f"{SVG}polyline")) == 2
    circles = root.findall(f"{SVG}circle")
    assert len(circles) == 4
    # The one point with an active alert is drawn filled.
    assert sum(1 for circle in circles if circle.get("fill") != "white") == 1
    assert any("threshold 0.2" in (text.text or "") for text in root.findall(f"{SVG}text"))


def test_chart_html_wraps_svg(tmp_path: Path) -> None:
    path = tmp_path / "drift.html"

    write_chart("output_chars", POINTS, path)

    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1


def test_chart_single_point(tmp_path: Path) -> None:
    path = tmp_path / "drift.svg"

    write_chart("output_chars", [point(0, "a", 0.5)], path)

    assert ElementTree.parse(path).getroot().find(f"{SVG}circle") is not None


def test_chart_rejects_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.svg or \.html"):
        write_chart("output_chars", POINTS, tmp_path / "drift.png")


def test_chart_rejects_no_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no drift results"):
        write_chart("output_chars", [point(0, "a", None)], tmp_path / "drift.svg")


def test_table_marks_firing_alert() -> None:
    state = DriftState(
        variant="b",
        signal="output_chars",
        evaluated_at=T0,
        outcome="fired",
        alert_active=True,
        statistic="psi",
        value=1.4,
        threshold=0.2,
        reference_samples=2000,
        current_start=T0 - timedelta(hours=1),
        current_end=T0,
        current_samples=1000,
    )
    console = Console(width=200, record=True)

    console.print(drift_table([state]))

    output = console.export_text()
    assert "FIRING" in output
    assert "1000 samples" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--plot", "output_chars"], "go together"),
        (["--out", "drift.svg"], "go together"),
        (["--plot", "output_chars", "--out", "drift.png"], ".svg or .html"),
        (["--since", "2025-01-01"], "summary report only"),
    ],
)
def test_report_drift_rejects_options(arguments: list[str], message: str) -> None:
    # An API key is given so that the option check runs. It fails before any request is sent.
    result = CliRunner().invoke(app, ["report", "drift", "--api-key", "unused", "--url", "http://127.0.0.1:9", *arguments])

    assert result.exit_code == 1
    assert message in result.output
