"""Build the model server: load the model once, then assemble the FastAPI app around its engine."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.model_server.adapters import adapter_folders, load_adapter_folders, merge_registered
from services.model_server.chat_routes import chat_router
from services.model_server.engine import GenerationEngine, ServingLimits
from services.model_server.errors import ModelServerError, RequestValidationFailed
from services.model_server.metrics import metrics_router
from services.model_server.tgi_routes import tgi_router
from shared.modeling import load_causal_lm

log = structlog.get_logger(__name__)

SERVER_NAME = "sluice-model-server"
# Model names a chat request may send for the base model: TGI's conventional
# "tgi", and "dummy", which huggingface_hub sends when it was given only a base URL.
BASE_MODEL_ALIASES = frozenset({"tgi", "dummy"})


def load_engine(
    model_dir: str | Path,
    max_concurrent_generations: int,
    adapters_dir: Path | None = None,
    registered_adapters: Mapping[str, Path] | None = None,
) -> GenerationEngine:
    """Load the model at `model_dir` on the CPU and return an engine whose limits come from its config.

    The context is the model's `max_position_embeddings`; a prompt may use
    all of it but one token, as in TGI. With `adapters_dir`, every LoRA
    adapter in it is served too, and so is each of `registered_adapters`
    (adapter id -> folder). Raises `shared.modeling.ModelLoadError`.
    """
    model, tokenizer = load_causal_lm(model_dir)
    folders = adapter_folders(adapters_dir) if adapters_dir is not None else {}
    folders = merge_registered(folders, registered_adapters or {})
    adapters: frozenset[str] = frozenset()
    if folders:
        model, adapters = load_adapter_folders(model, folders)
    max_total_tokens = int(model.config.max_position_embeddings)
    limits = ServingLimits(
        max_input_tokens=max_total_tokens - 1,
        max_total_tokens=max_total_tokens,
        max_concurrent_generations=max_concurrent_generations,
    )
    model_id = Path(model_dir).name if Path(model_dir).is_dir() else str(model_dir)
    log.info("model_loaded", model_id=model_id, max_total_tokens=max_total_tokens, parameters=model.num_parameters())
    return GenerationEngine(model, tokenizer, model_id, limits, adapters)


def create_app(engine: GenerationEngine) -> FastAPI:
    """Return the app serving `engine` over TGI's HTTP API and the OpenAI chat completion API."""
    server_version = version("sluice")
    app = FastAPI(title=SERVER_NAME, version=server_version)
    app.include_router(tgi_router(engine, _info(engine, server_version)))
    accepted = BASE_MODEL_ALIASES | {engine.model_id}
    app.include_router(chat_router(engine, accepted, fingerprint=f"{server_version}-{SERVER_NAME}"))
    app.include_router(metrics_router(engine))
    app.add_exception_handler(ModelServerError, _server_error_response)
    app.add_exception_handler(RequestValidationError, _body_error_response)
    return app


def _info(engine: GenerationEngine, server_version: str) -> dict[str, Any]:
    limits = engine.limits
    return {
        "model_id": engine.model_id,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_concurrent_generations,
        "max_best_of": 1,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_tokens": limits.max_input_tokens,
        "max_total_tokens": limits.max_total_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": SERVER_NAME,
        "version": server_version,
        "sha": None,
        "docker_label": None,
    }


async def _server_error_response(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, ModelServerError):
        raise TypeError(f"handler registered for ModelServerError received {type(error).__name__}")
    log.info("request_rejected", path=request.url.path, status=error.status_code, error_type=error.error_type, error=error.message)
    return JSONResponse(error.to_body(), status_code=error.status_code)


async def _body_error_response(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, RequestValidationError):
        raise TypeError(f"handler registered for RequestValidationError received {type(error).__name__}")
    problems = "; ".join(_describe(problem) for problem in error.errors())
    return await _server_error_response(request, RequestValidationFailed(f"Input validation error: {problems}"))


def _describe(problem: dict[str, Any]) -> str:
    # `loc` starts with "body"; the rest is the field path, as the client wrote it.
    path = ".".join(str(part) for part in problem["loc"][1:]) or "body"
    return f"`{path}`: {problem['msg']}"
