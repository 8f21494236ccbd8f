"""The demonstration's `summary.md`: every figure in a Markdown table, under the command that reproduces it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.events import ModelEvaluatedPayload


@dataclass(frozen=True)
class Section:
    """One step of the demonstration: a title, Markdown lines with its figures, and the commands behind them."""

    title: str
    lines: list[str]
    commands: list[str]


@dataclass
class Summary:
    """The sections gathered as the demonstration runs, written once at the end (or at a failure, as far as it got)."""

    header: list[str]
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, lines: list[str], commands: Sequence[str] = ()) -> None:
        self.sections.append(Section(title, lines, list(commands)))

    def markdown(self) -> str:
        """Return the whole document."""
        parts = ["# Optimization demonstration", "", *self.header]
        for section in self.sections:
            parts += ["", f"## {section.title}", ""]
            if section.commands:
                parts += ["```sh", *section.commands, "```", ""]
            parts += section.lines
        return "\n".join(parts) + "\n"

    def write(self, path: Path) -> Path:
        path.write_text(self.markdown(), encoding="utf-8")
        return path


def command(*words: object) -> str:
    """Return a shell command line of `words`, each quoted where the shell needs it.

    A path under the working folder is written relative to it, so that the
    command reads the same from any checkout.
    """
    return shlex.join(_relative(word) if isinstance(word, Path) else str(word) for word in words)


def _relative(path: Path) -> str:
    absolute = path.absolute()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(path)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Return the lines of a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def evaluation_rows(results: dict[str, ModelEvaluatedPayload]) -> list[list[str]]:
    """Return one table row per evaluated model version, in insertion order."""
    return [
        [
            name,
            f"{result.perplexity:,.2f}",
            f"{result.accuracy:.1%}",
            f"{result.blocked_rate:.1%}",
            f"{result.flagged_rate:.1%}",
            f"{result.latency.p50_ms:.1f} / {result.latency.p95_ms:.1f}",
            f"{result.tokens_per_s:,.1f}",
        ]
        for name, result in results.items()
    ]


EVALUATION_HEADERS = ("model", "perplexity", "accuracy", "blocked", "flagged only", "latency p50 / p95 (ms)", "tokens/s")
