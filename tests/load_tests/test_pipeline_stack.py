"""The serving config the pipeline benchmark writes, loaded by the services' own loader."""

from __future__ import annotations

from pathlib import Path

from load_tests.pipeline_stack import ZERO_BACKEND_NAME, bench_folder, bench_stack, write_serving_config
from shared.experiments import load_serving_config
from shared.settings import Settings


def test_serving_config_points_at_backend(tmp_path: Path) -> None:
    experiments, backends = write_serving_config(tmp_path, "http://127.0.0.1:9999", max_new_tokens=32)

    config = load_serving_config(Settings(experiments_file=experiments, backends_file=backends))

    assert config.backends[ZERO_BACKEND_NAME].url == "http://127.0.0.1:9999"
    variants = config.experiments.variants()
    assert len(variants) == 3
    assert {variant.backend for variant in variants} == {ZERO_BACKEND_NAME}
    assert {variant.params.max_new_tokens for variant in variants} == {32}


def test_bench_stack_passes_config_to_children(tmp_path: Path) -> None:
    experiments, backends = write_serving_config(tmp_path, "http://127.0.0.1:9999", max_new_tokens=32)

    environment = bench_stack(tmp_path / "stack", experiments, backends, request_timeout_s=10.0).child_environment()

    assert environment["SLUICE_EXPERIMENTS_FILE"] == str(experiments)
    assert environment["SLUICE_BACKENDS_FILE"] == str(backends)
    assert environment["SLUICE_REQUEST_TIMEOUT_S"] == "10.0"


def test_bench_folder_keeps_given_folder(tmp_path: Path) -> None:
    given = tmp_path / "kept" / "run"

    with bench_folder(given, "unused-") as root:
        (root / "log.txt").write_text("x")

    assert root == given
    assert (given / "log.txt").read_text() == "x"


def test_bench_folder_removes_temporary_folder() -> None:
    with bench_folder(None, "sluice-test-bench-") as root:
        assert root.is_dir()
        assert root.name.startswith("sluice-test-bench-")

    assert not root.exists()
