"""Run every benchmark in turn and write `docs/benchmarks.md`.

`make bench` calls `python -m load_tests.bench`. Benchmarks run one after
another in this process tree, so none disturbs another's figures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from load_tests.report import BenchSection, render_page
from shared.settings import REPO_ROOT

# Cheapest first: a broken environment shows up within seconds.
BENCHMARKS = (
    "bench_bus",
    "bench_screening",
    "bench_safety_eval",
    "bench_moderation",
    "bench_telemetry",
    "bench_sluice_vs_direct",
    "bench_pipeline",
    "bench_memory",
    "bench_drift",
)
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
# A quick run's figures are noise, so it never replaces the recorded page.
QUICK_OUTPUT = REPO_ROOT / "data" / "benchmarks-quick.md"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small configurations (seconds each), for a smoke run")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark; repeatable")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"the markdown file to write (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)}, "
        f"or {QUICK_OUTPUT.relative_to(REPO_ROOT)} with --quick)",
    )
    return parser.parse_args(argv)


def run_benchmark(name: str, quick: bool) -> BenchSection:
    module = importlib.import_module(f"load_tests.{name}")
    started = time.monotonic()
    sys.stderr.write(f"running {name}{' (quick)' if quick else ''}\n")
    section = module.run(quick=quick)
    sys.stderr.write(f"finished {name} in {time.monotonic() - started:.0f} s\n")
    return section


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    started = datetime.now(timezone.utc)
    names = arguments.only or list(BENCHMARKS)
    sections = [run_benchmark(name, arguments.quick) for name in names]
    command = "make bench" if not arguments.quick else "python -m load_tests.bench --quick"
    if arguments.only:
        command += "".join(f" --only {name}" for name in names)
    output = arguments.output or (QUICK_OUTPUT if arguments.quick else DEFAULT_OUTPUT)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_page(sections, command, started))
    sys.stderr.write(f"wrote {output}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
