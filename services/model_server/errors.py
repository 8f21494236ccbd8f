"""The model server's errors, each carrying the HTTP status and TGI `error_type` its response gets.

TGI clients (`huggingface_hub`, `text_generation`) turn `error_type` into
their own exception classes: "validation" becomes `ValidationError`,
"overloaded" `OverloadedError`, "generation" `GenerationError`.
"""

from __future__ import annotations


class ModelServerError(Exception):
    """Base class; `status_code` and `error_type` describe the HTTP error response."""

    status_code = 500
    error_type = "generation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, str]:
        """Return the TGI `ErrorResponse` body: {"error": message, "error_type": kind}."""
        return {"error": self.message, "error_type": self.error_type}


class RequestValidationFailed(ModelServerError):
    """The request is malformed, requests something unsupported, or exceeds a token limit. Nothing ran."""

    status_code = 422
    error_type = "validation"


class GenerationFailed(ModelServerError):
    """The model raised while generating. The original error is the cause."""

    status_code = 500
    error_type = "generation"
