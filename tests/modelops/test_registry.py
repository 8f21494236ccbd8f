"""`sluice model register` and `sluice model list` against a real nats-server: lineage round trip and bad inputs."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from shared.model_registry import ModelKind, ModelRecord, get_model, open_model_registry
from shared.settings import DEFAULT_MODEL_DIR, Settings
from tests.support.jetstream import jetstream_client

_RUN_LINE = re.compile(r"published model\.evaluated as run (\S+)")
# Long enough for telemetry's fetch and insert on a loaded two-core machine; registering retries until the row is there.
EVAL_WAIT_S = 30.0


def run_model(nats_url: str, *arguments: str) -> tuple[int, str]:
    """Run `sluice model ARGUMENTS --nats-url NATS_URL`; return the exit code and the output, its whitespace collapsed.

    rich wraps messages at the terminal width, so a message's words are compared, not its line breaks.
    """
    result = CliRunner().invoke(app, ["model", *arguments, "--nats-url", nats_url])
    return result.exit_code, " ".join(result.output.split())


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _adapter_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return folder


def _record(nats_url: str, name: str) -> ModelRecord | None:
    async def read() -> ModelRecord | None:
        async with jetstream_client(nats_url) as jetstream:
            return await get_model(await open_model_registry(jetstream), name)

    return asyncio.run(read())


def _register_base(nats_url: str) -> str:
    name = _name("base")
    exit_code, output = run_model(nats_url, "register", name, "--path", str(DEFAULT_MODEL_DIR))
    assert exit_code == 0, output
    return name


def test_register_list_round_trip(nats_url: str, tmp_path: Path) -> None:
    base = _register_base(nats_url)
    adapter = _name("romeo")
    digest = "a" * 64

    exit_code, output = run_model(
        nats_url, "register", adapter, "--path", str(_adapter_folder(tmp_path)), "--adapter", "--base", base,
        "--quantization", "int8", "--dataset-hash", digest,
    )
    assert exit_code == 0, output
    list_code, listing = run_model(nats_url, "list")

    record = _record(nats_url, adapter)
    assert record is not None
    assert (record.kind, record.base, record.quantization, record.dataset_sha256) == (ModelKind.ADAPTER, base, "int8", digest)
    assert record.path == str((tmp_path / "adapter").resolve())
    assert record.eval is None
    base_record = _record(nats_url, base)
    assert base_record is not None
    assert (base_record.kind, base_record.path) == (ModelKind.MODEL, str(DEFAULT_MODEL_DIR.resolve()))
    assert list_code == 0
    assert base in listing
    assert adapter in listing


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["a/b", "--path", "MODEL"], "invalid model name 'a/b'"),
        ([".hidden", "--path", "MODEL"], "invalid model name"),
        (["__base__", "--path", "MODEL"], "invalid model name"),
        (["m", "--path", "absent"], "does not exist"),
        (["m", "--path", "ADAPTER"], "contains no config.json"),
        (["m", "--path", "MODEL", "--adapter", "--base", "x"], "contains no adapter_config.json"),
        (["m", "--path", "ADAPTER", "--adapter"], "needs --base"),
        (["m", "--path", "ADAPTER", "--adapter", "--base", "never-registered"], "unknown base 'never-registered'"),
        (["m", "--path", "MODEL", "--quantization", "int3"], "invalid quantization 'int3'"),
    ],
)
def test_bad_registration_rejected(nats_url: str, tmp_path: Path, arguments: list[str], message: str) -> None:
    replacements = {"MODEL": str(DEFAULT_MODEL_DIR), "ADAPTER": str(_adapter_folder(tmp_path)), "absent": str(tmp_path / "absent")}
    resolved = [replacements.get(argument, argument) for argument in arguments]

    exit_code, output = run_model(nats_url, "register", *resolved)

    assert exit_code == 1
    assert message in output


def test_adapter_on_adapter_rejected(nats_url: str, tmp_path: Path) -> None:
    base = _register_base(nats_url)
    first = _name("first")
    folder = str(_adapter_folder(tmp_path))
    assert run_model(nats_url, "register", first, "--path", folder, "--adapter", "--base", base)[0] == 0

    exit_code, output = run_model(nats_url, "register", _name("second"), "--path", folder, "--adapter", "--base", first)

    assert exit_code == 1
    assert f"unknown base '{first}'" in output


def test_taken_name_needs_replace(nats_url: str, tmp_path: Path) -> None:
    name = _register_base(nats_url)

    exit_code, output = run_model(nats_url, "register", name, "--path", str(DEFAULT_MODEL_DIR), "--quantization", "int4")
    replaced_code, _ = run_model(nats_url, "register", name, "--path", str(DEFAULT_MODEL_DIR), "--quantization", "int4", "--replace")

    assert exit_code == 1
    assert "already registered" in output
    assert replaced_code == 0
    record = _record(nats_url, name)
    assert record is not None
    assert record.quantization == "int4"


def test_unreachable_nats_named(tmp_path: Path) -> None:
    exit_code, output = run_model("nats://127.0.0.1:1", "register", "m", "--path", str(DEFAULT_MODEL_DIR))

    assert exit_code == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in output


async def _registered_with_eval(nats_url: str, name: str, eval_run: str) -> tuple[int, str]:
    """Register `name` with `--eval-run`, retrying while telemetry has not stored the run yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVAL_WAIT_S
    while True:
        result = await asyncio.to_thread(
            run_model, nats_url, "register", name, "--path", str(DEFAULT_MODEL_DIR), "--eval-run", eval_run, "--replace"
        )
        if result[0] == 0 or loop.time() > deadline:
            return result
        await asyncio.sleep(0.2)


async def test_eval_run_copied_into_record(telemetry_app: Settings, nats_url: str, tmp_path: Path) -> None:
    name = _name("evaluated")
    dataset = tmp_path / "romeo.jsonl"
    dataset.write_text(json.dumps({"prompt": "ROMEO:\n", "completion": "Ay me.\n"}) + "\n")
    eval_arguments = ["eval", str(DEFAULT_MODEL_DIR), "--dataset", str(dataset), "--max-new-tokens", "4", "--model-version", name]
    exit_code, output = await asyncio.to_thread(run_model, nats_url, *eval_arguments)
    assert exit_code == 0, output
    run = _RUN_LINE.search(output)
    assert run is not None, output

    by_id = await _registered_with_eval(nats_url, name, run.group(1))
    latest = await _registered_with_eval(nats_url, name, "latest")

    assert by_id[0] == 0, by_id[1]
    assert latest[0] == 0, latest[1]
    record = await asyncio.to_thread(_record, nats_url, name)
    assert record is not None
    assert record.eval is not None
    assert record.eval.evaluation_id == run.group(1)
    assert (record.eval.dataset, record.eval.examples, record.eval.metric) == ("romeo", 1, "first_line_exact_match")
    assert record.eval.perplexity > 1.0


async def test_unknown_eval_run_rejected(telemetry_app: Settings, nats_url: str) -> None:
    exit_code, output = await asyncio.to_thread(
        run_model, nats_url, "register", _name("m"), "--path", str(DEFAULT_MODEL_DIR), "--eval-run", "no-such-run"
    )

    assert exit_code == 1
    assert "no evaluation with run id 'no-such-run'" in output
