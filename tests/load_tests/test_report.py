"""Markdown rendering of a benchmark section with further tables."""

from __future__ import annotations

from load_tests.report import BenchSection, BenchTable


def test_section_renders_tables_before_notes() -> None:
    section = BenchSection(
        title="Overhead",
        command="python -m x",
        headers=["a"],
        rows=[["1"]],
        notes=["a note"],
        tables=[BenchTable("CPU", ["b", "c"], [["2", "3"]])],
    )

    lines = section.to_markdown().splitlines()

    assert lines[lines.index("### CPU") + 2] == "| b | c |"
    assert lines[lines.index("### CPU") + 4] == "| 2 | 3 |"
    assert lines.index("### CPU") > lines.index("| 1 |")
    assert lines.index("- a note") > lines.index("| 2 | 3 |")


def test_section_without_tables_unchanged() -> None:
    section = BenchSection(title="T", command="c", headers=["a"], rows=[["1"]])

    assert section.to_markdown() == "## T\n\nCommand: `c`\n\n| a |\n| --- |\n| 1 |\n"
