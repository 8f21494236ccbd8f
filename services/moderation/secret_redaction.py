"""Finding the secrets in streaming output as spans to redact, with the detector of the policy's `Secrets` entries.

`SecretsScanner.detect` returns each secret's value, not its position. Every
occurrence of each value in the scanned text becomes a `SecretMatch`, not
only the first as in the scanner's own redaction, so that no copy of a
secret reaches a client. The redactor (`services.moderation.redaction`)
replaces each match by `[SECRET]` before release.

detect-secrets can stop reporting a value once its line grows:
bc-detect-secrets 1.5.43 drops the password of `postgres://user:password@host`
once an email address follows on the same line. So `find` adds each value
it reports to the stream's set of known values, and redacts every known
value wherever it occurs in later windows too.

NOTE: a value that the text does not contain verbatim, such as one that the
config-file transformer rewrote, is not redacted.

NOTE: a check costs about 0.08 ms of CPU on a 512-character window of
prose, but about 6 ms while a secret sits on a long line of the window
(2,000 calls of `OutputRedactor.find`, 2-core machine). The cost is
detect-secrets' `is_indirect_reference` filter, which runs a backtracking
pattern over each line where a plugin found something. A secret stays in
the window for about 512 characters of output, so small chunks pay that
cost many times.

Nothing here logs, so no detected value can reach a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shared.scanning import PolicyError, ScannerFailed
from shared.scanning.policy import OutputSecretsSpec, ScannerSpec
from shared.scanning.secrets import SecretsScanner

# The text that replaces a secret in released output, in the form of the PII
# placeholders such as `[EMAIL]`.
SECRET_PLACEHOLDER = "[SECRET]"


@dataclass(frozen=True, order=True)
class SecretMatch:
    """One occurrence of a detected secret: its span in the text (`text[start:end]`)."""

    start: int
    end: int

    @property
    def placeholder(self) -> str:
        """The text that replaces the secret."""
        return SECRET_PLACEHOLDER


class OutputSecretFinder:
    """The `Secrets` entries of one output policy, as one finder of every occurrence of every secret in a text.

    Entries of both actions are searched: a `block` entry stops the output
    in the streaming check, and this redacts what that check could not see,
    such as a secret that an earlier scanner of the chain rewrote. All
    entries detect the same secrets, so one detector serves them. Building
    it imports llm-guard (about 6 s, once per process). Thread-safe once built.
    """

    def __init__(self, specs: Iterable[ScannerSpec]) -> None:
        """Build the detector when an entry needs it; raises `PolicyError` when it cannot be built."""
        self._names = tuple(spec.label for spec in specs if isinstance(spec, OutputSecretsSpec))
        self._scanner = _build_detector(self._names[0]) if self._names else None

    @property
    def names(self) -> tuple[str, ...]:
        """Labels of the `Secrets` entries."""
        return self._names

    def find(self, text: str, known_values: set[str]) -> list[SecretMatch]:
        """Return every occurrence in `text` of every secret found now or before, by position.

        The values detected in `text` are added to `known_values`, the set of
        one stream, so a value is still redacted after the detector stops
        reporting it. Occurrences of two values may overlap. Raises
        `ScannerFailed`, naming the first `Secrets` entry, when the detector raises.
        """
        if self._scanner is None:
            return []
        known_values.update(self._detect(self._scanner, text))
        matches = {match for value in known_values for match in _occurrences(value, text)}
        return sorted(matches)

    def _detect(self, scanner: SecretsScanner, text: str) -> list[str]:
        try:
            return [secret.value for secret in scanner.detect(text)]
        # detect-secrets plugins and filters are third-party code that can
        # raise anything on odd input, and a failed detector must stop the
        # release. The error is logged with its cause, so the cause keeps
        # the traceback but not the message, which can quote the text.
        except Exception as error:
            name = self._names[0]
            raise ScannerFailed(name, f"scanner {name} raised {type(error).__name__}") from _without_message(error)


def _without_message(error: Exception) -> RuntimeError:
    """Return an error that names the type of `error` and carries its traceback, without its message."""
    stripped = RuntimeError(f"{type(error).__name__}; its message is left out because it can quote the scanned text")
    return stripped.with_traceback(error.__traceback__)


def _build_detector(name: str) -> SecretsScanner:
    try:
        return SecretsScanner()
    # Building imports llm-guard's plugin list and detect-secrets' plugins,
    # which raise whatever a broken install raises.
    except Exception as error:
        raise PolicyError(f"output scanner {name} cannot be built: {type(error).__name__}: {error}") from error


def _occurrences(value: str, text: str) -> Iterator[SecretMatch]:
    """Yield the non-overlapping occurrences of `value` in `text`, with any run of whitespace matching any other.

    detect-secrets reads text as a file, so it reports a private key body
    with "\\n" between its lines where the text ends them with "\\r\\n".
    """
    parts = value.split()
    if not parts:
        return
    pattern = re.compile(r"\s+".join(re.escape(part) for part in parts))
    for found in pattern.finditer(text):
        yield SecretMatch(found.start(), found.end())
