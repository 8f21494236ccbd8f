"""The errors of the scanning package.

`ScanningError` is the base. llm-guard, tiktoken and YAML errors are
translated into these classes where the scanners are built and run, and the
original error is kept as `__cause__`.
"""

from __future__ import annotations


class ScanningError(Exception):
    """Base class of every error that `shared.scanning` raises."""


class PolicyError(ScanningError):
    """The policy file is missing, is not valid YAML, breaks the schema, or names a scanner that cannot be built.

    The message names the file, the key path (for example
    `input[2].options.substrings`), the value found and what is allowed.
    """


class ScannerFailed(ScanningError):
    """A scanner raised while scanning a text; the verdict of the chain is unknown.

    `scanner` is the name of the scanner in the policy.
    """

    def __init__(self, scanner: str, message: str) -> None:
        super().__init__(message)
        self.scanner = scanner
