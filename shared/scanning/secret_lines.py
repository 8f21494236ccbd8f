"""The lines that detect-secrets' `scan_file` scans for a prompt: the file's own lines or a config-file transformer's.

`scan_file` (bc-detect-secrets 1.5.43) reads llm-guard's temporary file in
text mode, so "\\r\\n" and "\\r" become "\\n". It first offers the file to
its transformers. For a file name without an extension the only one is the
config-file transformer, which parses the text as an INI file and returns
`key = "value"` lines when that succeeds. When it returns nothing, the
file's own lines are scanned. When that first pass finds nothing, the eager
config-file transformer parses the text again with a `[global]` header
added, and its lines, if any, get a second pass.

Both transformers run Python's configparser: about 0.2 ms of a 0.55 ms
scan of a 2,000-character prose prompt (the screening benchmark's texts, 2
CPU cores). `PromptLines` skips a parse whose failure follows from
configparser's grammar, with its default delimiters "=" and ":", comment
prefixes "#" and ";", and section headers in brackets:

- Without a "[" in the text, the config-file transformer finds no section
  header. configparser then raises `MissingSectionHeaderError` or ends with
  no section, and either way the transformer returns nothing.
- A line that starts without indentation (so it continues no value), is
  not a comment, does not start with "[" and contains no delimiter is a
  parsing error, so the eager transformer returns nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from detect_secrets.transformers import get_transformed_file, get_transformers
from detect_secrets.transformers.config import ConfigFileTransformer, EagerConfigFileTransformer

# configparser.ConfigParser's defaults, which detect-secrets' config-file transformers keep.
_INI_DELIMITERS = ("=", ":")
_INI_COMMENT_PREFIXES = ("#", ";")
_INI_SECTION_START = "["


class PromptLines:
    """The prompt as detect-secrets reads llm-guard's file of it: its raw lines and the lines of each scan pass."""

    def __init__(self, prompt: str, filename: str, skip_failing_parses: bool) -> None:
        """Read `prompt` as a file called `filename`.

        `skip_failing_parses` turns on the shortcuts above. Turn them on only
        when `transformers_are_config_only(filename)` is True.
        """
        self._file = _PromptFile(prompt, filename)
        # `scan_file` gives plugins these lines as `raw_context`, and the
        # private-key plugin reads their concatenation as the whole file.
        self.raw_lines = self._file.readlines()
        self.content = "".join(self.raw_lines)
        self._skip_failing_parses = skip_failing_parses

    def passes(self) -> Iterator[list[str]]:
        """Yield the lines of the first pass, then those of the eager pass, if any.

        The caller stops iterating once a pass found a secret, as `scan_file` does.
        """
        transformed = self._transform(eager=False) if self._may_parse_as_config() else None
        yield transformed or self.raw_lines

        if self._may_parse_as_eager_config():
            eager_lines = self._transform(eager=True)
            if eager_lines:
                yield eager_lines

    def _transform(self, eager: bool) -> list[str] | None:
        self._file.seek(0)
        return get_transformed_file(self._file, use_eager_transformers=eager)

    def _may_parse_as_config(self) -> bool:
        return not self._skip_failing_parses or _INI_SECTION_START in self.content

    def _may_parse_as_eager_config(self) -> bool:
        if not self._skip_failing_parses:
            return True
        return not any(_is_ini_error_line(line) for line in self.content.split("\n"))


def transformers_are_config_only(filename: str) -> bool:
    """Return True when the only transformers that detect-secrets offers `filename` are the config-file ones."""
    applicable = {type(transformer) for transformer in get_transformers() if transformer.should_parse_file(filename)}
    return applicable == {ConfigFileTransformer, EagerConfigFileTransformer}


def _is_ini_error_line(line: str) -> bool:
    """Return True when configparser reports `line` as a parsing error wherever it occurs in a sectioned file."""
    value = line.strip()
    if not value or line[0].isspace():
        return False
    if value.startswith(_INI_COMMENT_PREFIXES) or value.startswith(_INI_SECTION_START):
        return False
    return not any(delimiter in value for delimiter in _INI_DELIMITERS)


class _PromptFile(io.StringIO):
    """The prompt as the text-mode file that detect-secrets' transformers read, with the `name` they check."""

    def __init__(self, prompt: str, filename: str) -> None:
        # newline=None translates "\r\n" and "\r" to "\n" on reading, as
        # llm-guard's `open(path)` of its temporary file does.
        super().__init__(prompt, newline=None)
        self.name = filename
