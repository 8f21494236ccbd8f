"""Field paths of validation errors."""

from __future__ import annotations

import pytest

from services.ingress.errors import field_path


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (("body", "params", "temperature"), "params.temperature"),
        (("body", "messages", 1, "role"), "messages.1.role"),
        (("query", "since"), "since"),
        (("body",), "body"),
        ((), "body"),
    ],
)
def test_field_path_drops_location_kind(location: tuple, expected: str) -> None:
    assert field_path(location) == expected
