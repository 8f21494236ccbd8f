"""The whole demonstration at a tiny size: every step runs, the live stack serves both arms, and everything stops."""

from __future__ import annotations

import fcntl
import io
import json
import socket
from urllib.parse import urlsplit

import pytest
import yaml
from rich.console import Console

from services.cli.optimize_demo.live import graded_counts
from services.cli.optimize_demo.run import CONFIG_DIR, DEFAULT_CORPUS, EXPERIMENT_CHART, STACK_DIR, SUMMARY_FILE, TCO_CHART, DemoOptions
from services.cli.optimize_demo.serving import BASE_VARIANT, EXPERIMENT_KEY, TUNED_BACKEND
from services.cli.optimize_demo.demonstration import run_demonstration
from shared.embedded.stack import LOCK_FILE_NAME
from tests.modelops.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.stack

# A few seconds of training and a handful of users: the orchestration, not the figures, is under test.
UNITS = 8
EVAL_EXAMPLES = 4
TRAIN_MINUTES = 0.05
SECTIONS = (
    "## 1. Task dataset",
    "## 2. LoRA fine-tuning",
    "## 3. Quantization",
    "## 4. Evaluation before and after",
    "## 5. Registry",
    f"## 6. A/B experiment `{EXPERIMENT_KEY}` through the stack",
    "## 7. Cost model with the measured throughput",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not DEFAULT_CORPUS.is_file():
        pytest.skip(f"{DEFAULT_CORPUS} not found: the corpus lives in ../shared/data/corpus/")
    out = tmp_path_factory.mktemp("demo")
    options = DemoOptions(out=out, train_minutes=TRAIN_MINUTES, units=UNITS, eval_examples=EVAL_EXAMPLES)
    return run_demonstration(options, Console(width=200, file=io.StringIO()))


def test_summary_has_every_step(demo) -> None:  # type: ignore[no-untyped-def]
    text = (demo.options.out / SUMMARY_FILE).read_text()

    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, [section for section, position in zip(SECTIONS, positions) if position == -1]
    assert positions == sorted(positions)
    assert (demo.options.out / TCO_CHART).is_file()
    assert (demo.options.out / EXPERIMENT_CHART).is_file()


def test_every_unit_served_by_an_arm(demo) -> None:  # type: ignore[no-untyped-def]
    assert len(demo.units) == UNITS
    assert {unit.status for unit in demo.units} == {"completed"}
    assert {unit.variant for unit in demo.units} <= {BASE_VARIANT, demo.served}
    assert sum(total for _correct, total in graded_counts(demo.units).values()) == UNITS


def test_report_counts_every_unit(demo) -> None:  # type: ignore[no-untyped-def]
    report = demo.report

    assert report.experiment == EXPERIMENT_KEY
    assert sum(arm.exposure_units for arm in report.arms) == UNITS
    conversion = next(metric for metric in report.metrics if metric.key == "conversion_rate")
    served = {arm.variant: arm for arm in conversion.arms}
    for variant, (correct, total) in graded_counts(demo.units).items():
        assert served[variant].units == total
        assert served[variant].estimate is not None
        assert served[variant].estimate.value == pytest.approx(correct / total)


def test_models_registered_with_lineage(demo) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((demo.options.out / "dataset" / "manifest.json").read_text())

    assert set(demo.evaluations) == {"tinyshakespeare-llama", "next-speaker", "next-speaker-int8", "next-speaker-int4"}
    assert demo.served in {"next-speaker-int8", "next-speaker-int4"}
    assert manifest["corpus"]["sha256"] == demo.corpus_sha256()


def test_stack_and_second_server_stopped(demo) -> None:  # type: ignore[no-untyped-def]
    stack_dir = demo.options.out / STACK_DIR
    with (stack_dir / LOCK_FILE_NAME).open("a") as lock:
        # The stack holds this lock while it runs; taking it shows the stack stopped.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    backends = yaml.safe_load((demo.options.out / CONFIG_DIR / "backends.yaml").read_text())
    tuned_url = urlsplit(backends["backends"][TUNED_BACKEND]["url"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((tuned_url.hostname, tuned_url.port), timeout=1.0).close()
