"""Fake secrets for the Secrets tests: one per pattern of every detect-secrets plugin that llm-guard enables.

`example_for(pattern, seed)` builds a string that `pattern` matches by
walking the tree that `re` parses it into. Character classes yield random
members, so the value looks random (high entropy, not a sequence that
detect-secrets' filters drop). The same seed always gives the same string.

A few plugins check more than their pattern: a JWT must decode to JSON, an
Azure key needs "AccountKey=" around it, an entropy plugin needs a quoted,
random string. `SPECIAL_EXAMPLES` contains a realistic case for each of them.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parser  # type: ignore[attr-defined]
from typing import Any

# A repeat with no fixed count gets this many copies when it must match at least once.
OPEN_REPEAT_COUNT = 12

_CATEGORY_CHARS = {
    sre_constants.CATEGORY_DIGIT: string.digits,
    sre_constants.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    sre_constants.CATEGORY_SPACE: " ",
}
# Characters tried for a negated class or a NOT_LITERAL, in this order.
_FALLBACK_CHARS = string.ascii_letters + string.digits + " _-."


def example_for(pattern: re.Pattern[str], seed: int) -> str:
    """Return a string that `pattern` matches, built from its parse tree with a random generator seeded by `seed`.

    Raises `ValueError` when the built string does not match, which happens
    for patterns whose lookarounds the builder ignores.
    """
    builder = _ExampleBuilder(random.Random(seed))
    text = builder.build(sre_parser.parse(pattern.pattern, pattern.flags))
    if not pattern.search(text):
        raise ValueError(f"the example {text!r} built for {pattern.pattern!r} does not match it")
    return text


class _ExampleBuilder:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._groups: dict[int, str] = {}

    def build(self, items: Any) -> str:
        return "".join(self._node(op, argument) for op, argument in items)

    def _node(self, op: Any, argument: Any) -> str:
        if op is sre_constants.LITERAL:
            return chr(argument)
        if op is sre_constants.NOT_LITERAL:
            return next(char for char in _FALLBACK_CHARS if ord(char) != argument)
        if op is sre_constants.ANY:
            return self._rng.choice(string.ascii_letters)
        if op is sre_constants.IN:
            return self._class_member(argument)
        if op is sre_constants.BRANCH:
            # The first alternative that is not empty is the pattern's usual form.
            alternatives = [alternative for alternative in argument[1] if len(alternative)] or argument[1]
            return self.build(alternatives[0])
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            return self._repeat(*argument)
        if op is sre_constants.SUBPATTERN:
            group, _, _, inner = argument
            text = self.build(inner)
            if group is not None:
                self._groups[group] = text
            return text
        if op is sre_constants.GROUPREF:
            return self._groups[argument]
        # Anchors and lookarounds match no text; the caller puts examples on a line of their own.
        return ""

    def _repeat(self, min_count: int, max_count: int, inner: Any) -> str:
        if min_count == 0 and max_count >= 1 and list(inner) == [(sre_constants.ANY, None)]:
            # A gap such as "aws.{0,20}?key" reads as words with one space between them.
            return " "
        if min_count == max_count:
            count = min_count
        elif min_count == 0:
            count = 0
        else:
            count = min(max_count, max(min_count, OPEN_REPEAT_COUNT))
        return "".join(self.build(inner) for _ in range(count))

    def _class_member(self, members: list[tuple[Any, Any]]) -> str:
        chars = ""
        negated = False
        for op, argument in members:
            if op is sre_constants.NEGATE:
                negated = True
            elif op is sre_constants.LITERAL:
                chars += chr(argument)
            elif op is sre_constants.RANGE:
                chars += "".join(chr(code) for code in range(argument[0], argument[1] + 1))
            elif op is sre_constants.CATEGORY:
                chars += _CATEGORY_CHARS.get(argument, "")
        if negated:
            return next(char for char in _FALLBACK_CHARS if char not in chars)
        # Prefer letters and digits, which real tokens are made of.
        readable = [char for char in chars if char.isalnum()]
        return self._rng.choice(readable or list(chars))


def random_text(alphabet: str, length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


def _base64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _jwt() -> str:
    header = _base64url({"alg": "HS256", "typ": "JWT"})
    payload = _base64url({"sub": "1234567890", "name": "Jane Roe", "iat": 1516239022})
    return f"{header}.{payload}.{random_text(string.ascii_letters + string.digits + '-_', 43, seed=7)}"


_BASE64 = string.ascii_letters + string.digits + "+/"

# Keyed by plugin class name: prompts whose secret the plugin finds only
# with more than a pattern match.
SPECIAL_EXAMPLES = {
    "JwtTokenDetector": f"Use this bearer token: {_jwt()}",
    "AzureStorageKeyDetector": (
        "DefaultEndpointsProtocol=https;AccountName=sluicelogs;"
        f"AccountKey={random_text(_BASE64, 86, seed=11)}==;EndpointSuffix=core.windows.net"
    ),
    "BasicAuthDetector": "Connect with postgres://reporting:Xq7vLp2mWz@db.internal.sluice.net:5432/events",
    "PrivateKeyDetector": (
        "Here is the deploy key:\n-----BEGIN RSA PRIVATE KEY-----\n"
        + "\n".join(random_text(_BASE64, 64, seed=seed) for seed in range(20, 24))
        + "\n-----END RSA PRIVATE KEY-----\n"
    ),
    # The plugin's first alternative (npm_...) yields an empty capture, which
    # detect-secrets drops, so only the _authToken form is ever reported.
    "NpmDetector": f"//registry.npmjs.org/:_authToken={random_text(string.ascii_lowercase + string.digits, 36, seed=12)}",
    "Base64HighEntropyString": f'client_secret = "{random_text(_BASE64, 40, seed=31)}"',
    "HexHighEntropyString": f"checksum = '{random_text('0123456789abcdef', 40, seed=32)}'",
    "IbmCloudIamDetector": f'ibm_cloud_iam_api_key = "{random_text(string.ascii_letters + string.digits, 44, seed=33)}"',
}
