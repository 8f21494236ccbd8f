"""Benchmark results and the markdown page `make bench` writes.

Every benchmark module exposes `run(quick: bool) -> BenchSection`; the runner
in `load_tests/bench.py` calls them in turn and writes `docs/benchmarks.md`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class BenchTable:
    """A further table of a section, under its own heading, for figures that do not fit the main table's columns."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def to_markdown(self) -> list[str]:
        return [f"### {self.title}", "", *markdown_table(self.headers, self.rows)]


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Return the lines of a markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


@dataclass
class BenchSection:
    """One benchmark's figures: a markdown table plus the command and baseline needed to read it elsewhere."""

    title: str
    command: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    # What the figures are measured against (the raw NATS floor, the direct backend call).
    baseline: str = ""
    notes: list[str] = field(default_factory=list)
    # Rendered after the main table, before the notes.
    tables: list[BenchTable] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", f"Command: `{self.command}`", ""]
        if self.baseline:
            lines += [f"Baseline: {self.baseline}", ""]
        lines += markdown_table(self.headers, self.rows)
        for table in self.tables:
            lines += ["", *table.to_markdown()]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_summary() -> str:
    cores = os.cpu_count() or 0
    return f"{cores} cores, {cpu_model()}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def render_page(sections: list[BenchSection], command: str, started: datetime) -> str:
    """Return the whole benchmarks page: how it was made, on what machine, then every section."""
    header = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {started.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine_summary()}.",
        "",
        "The load generator runs on the same machine and its CPU use is reported beside it.",
        "Each figure sits beside a baseline measured in the same run, so it can be read on another machine.",
        "This page is generated; edit the benchmarks in `load_tests/`, not this file.",
        "",
    ]
    return "\n".join(header) + "\n".join(section.to_markdown() for section in sections)
