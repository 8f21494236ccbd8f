"""Parsing of `sluice feedback`'s options, without a server."""

from __future__ import annotations

import pytest

from services.cli.feedback import MetadataError, parse_metadata


def test_metadata_pairs_parsed() -> None:
    assert parse_metadata(["page=pricing", "locale=en"]) == {"page": "pricing", "locale": "en"}


def test_metadata_value_may_contain_equals() -> None:
    assert parse_metadata(["query=a=b"]) == {"query": "a=b"}


def test_metadata_empty_value_allowed() -> None:
    assert parse_metadata(["note="]) == {"note": ""}


@pytest.mark.parametrize("pair", ["page", "=pricing"])
def test_malformed_metadata_rejected(pair: str) -> None:
    with pytest.raises(MetadataError, match="KEY=VALUE"):
        parse_metadata([pair])
