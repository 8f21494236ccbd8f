"""The per-model token price table that the cost report multiplies token counts by (shared/config/prices.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.settings import DEFAULT_CONFIG_DIR
from shared.store_client import describe_validation_error

DEFAULT_PRICES_FILE = DEFAULT_CONFIG_DIR / "prices.yaml"

TOKENS_PER_PRICE_UNIT = 1_000_000


class PriceTableError(ValueError):
    """The price file is missing, not YAML, or not a valid price table; the message names the file and the field."""


class TokenPrice(BaseModel):
    """US dollars per million prompt tokens and per million completion tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt_usd_per_1m_tokens: float = Field(ge=0)
    completion_usd_per_1m_tokens: float = Field(ge=0)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the price of the given token counts in US dollars."""
        prompt_usd = prompt_tokens * self.prompt_usd_per_1m_tokens
        completion_usd = completion_tokens * self.completion_usd_per_1m_tokens
        return (prompt_usd + completion_usd) / TOKENS_PER_PRICE_UNIT


class PriceTable(BaseModel):
    """Prices per model name, and the price of every model that is not listed."""

    model_config = ConfigDict(extra="forbid")

    default: TokenPrice
    models: dict[str, TokenPrice] = Field(default_factory=dict)

    def price_of(self, model: str) -> TokenPrice:
        return self.models.get(model, self.default)


def load_price_table(path: Path = DEFAULT_PRICES_FILE) -> PriceTable:
    """Read and validate the price file; raises `PriceTableError`."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PriceTableError(f"cannot read the price file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise PriceTableError(f"the price file {path} is not valid YAML: {error}") from error
    try:
        return PriceTable.model_validate(document)
    except ValidationError as error:
        raise PriceTableError(f"invalid price file {path}: {describe_validation_error(error)}") from error
