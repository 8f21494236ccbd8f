"""The PII detector and scanner on fixed examples: each entity, the checksum checks, and the actions."""

from __future__ import annotations

import pytest

from shared.scanning.pii import PiiDetector, PiiEntity, PiiScanner, redact

# Fixed examples: documentation numbers that pass their checks (Visa's test
# card, the IBAN of the ISO 13616 example, Ofcom's drama range, AWS's example key).
VALID_EXAMPLES = [
    (PiiEntity.EMAIL, "jane.doe+news@mail.example.co.uk"),
    (PiiEntity.PHONE, "+44 20 7946 0958"),
    (PiiEntity.PHONE, "(415) 555-2671"),
    (PiiEntity.PHONE, "020 7946 0958"),
    (PiiEntity.PHONE, "+49 30 1234567"),
    (PiiEntity.CREDIT_CARD, "4111 1111 1111 1111"),
    (PiiEntity.CREDIT_CARD, "5500-0000-0000-0004"),
    (PiiEntity.IBAN, "GB82 WEST 1234 5698 7654 32"),
    (PiiEntity.IBAN, "DE89370400440532013000"),
    (PiiEntity.API_KEY, "AKIAIOSFODNN7EXAMPLE"),
    (PiiEntity.API_KEY, "ghp_" + "a1B2" * 9),
    (PiiEntity.API_KEY, "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q"),
]

# Near misses that must pass unchanged: one digit off the Luhn or mod-97
# check, a date, an order number, an address without a domain.
INVALID_EXAMPLES = [
    "4111 1111 1111 1112",
    "GB82 WEST 1234 5698 7654 33",
    "DE89370400440532013001",
    "2024-05-06",
    "order 998877",
    "jane.doe@localhost",
]


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


@pytest.mark.parametrize(("entity", "value"), VALID_EXAMPLES, ids=[value for _, value in VALID_EXAMPLES])
def test_entity_detected_and_redacted(detector: PiiDetector, entity: PiiEntity, value: str) -> None:
    text = f"Please use {value} for this."

    matches = detector.find(text)

    assert [(match.entity, text[match.start : match.end]) for match in matches] == [(entity, value)]
    assert redact(text, matches) == f"Please use {entity.placeholder} for this."


@pytest.mark.parametrize("value", INVALID_EXAMPLES)
def test_near_miss_not_flagged(detector: PiiDetector, value: str) -> None:
    assert detector.find(f"Please use {value} for this.") == []


def test_card_wins_over_phone(detector: PiiDetector) -> None:
    matches = detector.find("card 4111111111111111 thanks")

    assert [match.entity for match in matches] == [PiiEntity.CREDIT_CARD]


def test_several_entities_redacted_in_place(detector: PiiDetector) -> None:
    text = "Mail a@example.com, call +1-202-555-0173, pay GB82 WEST 1234 5698 7654 32."

    assert redact(text, detector.find(text)) == "Mail [EMAIL], call [PHONE], pay [IBAN]."


def test_scan_redact_keeps_valid() -> None:
    scanner = PiiScanner(dict.fromkeys(PiiEntity, "redact"))

    sanitized, valid, risk = scanner.scan("write to a@example.com")

    assert sanitized == "write to [EMAIL]"
    assert valid is True
    assert risk == 1.0


def test_scan_block_is_invalid_and_redacted() -> None:
    scanner = PiiScanner({PiiEntity.EMAIL: "redact", PiiEntity.CREDIT_CARD: "block"})

    sanitized, valid, _ = scanner.scan("a@example.com paid with 4111 1111 1111 1111")

    assert valid is False
    assert sanitized == "[EMAIL] paid with [CREDIT_CARD]"


def test_scan_allow_leaves_value() -> None:
    scanner = PiiScanner({PiiEntity.EMAIL: "allow", PiiEntity.PHONE: "redact"})

    sanitized, valid, risk = scanner.scan("a@example.com")

    assert (sanitized, valid, risk) == ("a@example.com", True, -1.0)


def test_scan_clean_text_unchanged() -> None:
    scanner = PiiScanner(dict.fromkeys(PiiEntity, "block"))

    assert scanner.scan("What rhymes with orange?") == ("What rhymes with orange?", True, -1.0)


def test_unknown_phone_region_rejected() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        PiiDetector(phone_regions=["XX"])
