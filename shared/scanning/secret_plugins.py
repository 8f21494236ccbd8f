"""detect-secrets plugins and filters run over a prompt in memory, as detect-secrets' `scan_file` runs them over a file.

`SecretPlugins.find(prompt)` replays `scan_file` of bc-detect-secrets
1.5.43 (the fork that llm-guard 0.3.16 installs) on the text that
llm-guard's Secrets scanner would write to its temporary file:

1. The prompt is split into lines as a text-mode file read splits it
   ("\\r\\n" and "\\r" become "\\n"). The config-file transformer may parse it
   first, and when the first pass finds nothing, the eager transformer's
   lines get a second pass, as in `scan_file`.
2. Each line, stripped, of `MIN_LINE_LENGTH` to `MAX_LINE_LENGTH`
   characters runs through the line filters, then each plugin, then the
   secret and context filters.

Two prefilters skip plugin calls that cannot find anything (see
`regex_prefilter`). A plugin runs on a line only when the line contains one
of the literals that every match of its patterns contains, and only when one
of its patterns matches the lines that passed that test, joined together.

Plugins, filters and prefilters are built once. Each `find` keeps its state
in its own objects, so concurrent calls need no lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.potential_secret import PotentialSecret
from detect_secrets.core.scan import MAX_LINE_LENGTH, MIN_LINE_LENGTH
from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.util.code_snippet import CodeSnippet, get_code_snippet
from detect_secrets.util.inject import get_injectable_variables

from shared.scanning.regex_prefilter import Literals, fold_case, joined_lines_pattern, required_literals
from shared.scanning.secret_lines import PromptLines, transformers_are_config_only

# The file name that plugins and filters receive. llm-guard's temporary file
# has a random name without an extension, which detect-secrets reads as an
# unknown file type (`FileType.OTHER`) that no file-name filter skips. This
# name reads the same way.
PROMPT_FILENAME = "prompt"

# Every argument that `scan_file` offers a plugin's `analyze_line`. Each
# plugin receives the ones its signature names.
_PLUGIN_ARGUMENTS = frozenset({"filename", "line", "line_number", "context", "raw_context", "commit_hash"})


@dataclass(frozen=True)
class DetectedSecret:
    """One secret found in a prompt: the detect-secrets plugin's `secret_type` and the matched text."""

    secret_type: str
    value: str


class SecretPlugins:
    """A fixed set of detect-secrets plugin instances and filter functions, ready to scan prompts.

    The plugins must not depend on per-file state, except the private-key
    plugin, which each scan replaces with its own instance.
    """

    def __init__(self, plugins: Sequence[BasePlugin], filters: Sequence[Callable[..., Any]]) -> None:
        self._gate = _PluginGate([_PluginRunner(plugin) for plugin in plugins])
        self._filters = _Filters(filters)
        self._skip_failing_parses = transformers_are_config_only(PROMPT_FILENAME)

    def find(self, prompt: str) -> set[DetectedSecret]:
        """Return each distinct (type, value) pair that `scan_file` would report for a file holding `prompt`."""
        return _PromptScan(prompt, self._gate, self._filters, self._skip_failing_parses).run()


class _PluginRunner:
    """One plugin with what a scan needs to call it: the arguments it takes and the prefilters that rule it out."""

    def __init__(self, plugin: BasePlugin) -> None:
        self.plugin = plugin
        self.argument_names = _PLUGIN_ARGUMENTS.intersection(get_injectable_variables(plugin.analyze_line))
        # The private-key plugin reads the whole file once per file and
        # remembers that it did, so each scan needs its own instance.
        self.reads_whole_file = isinstance(plugin, PrivateKeyDetector)

        patterns = _line_patterns(plugin)
        self.literals = _union_of_literals(patterns)
        # Searched once per pass over the lines that have its literals; None
        # when a pattern has no such form. The private-key plugin is left
        # out because it also reads the unsplit prompt.
        self.joined_patterns = None if self.reads_whole_file else _joined_patterns(patterns)

    def may_match_line(self, present_literals: frozenset[str]) -> bool:
        """Return False only when a line whose literals are `present_literals` gives the plugin nothing."""
        return self.literals is None or not self.literals.isdisjoint(present_literals)

    def may_match_folded_text(self, folded_text: str) -> bool:
        """Return False only when the plugin can find nothing in the text that `fold_case` turned into `folded_text`."""
        return self.literals is None or any(literal in folded_text for literal in self.literals)

    def may_match_joined_lines(self, joined_lines: str) -> bool:
        """Return False only when none of the lines in `joined_lines`, joined by "\\n", gives the plugin anything."""
        if self.joined_patterns is None:
            return True
        return any(pattern.search(joined_lines) for pattern in self.joined_patterns)

    def analyze_line(self, plugin: BasePlugin, arguments: dict[str, Any]) -> set[PotentialSecret]:
        """Call `plugin.analyze_line` with the arguments its signature names; `plugin` is this runner's or a stand-in."""
        return plugin.analyze_line(**{name: arguments[name] for name in self.argument_names})  # type: ignore[no-any-return]


def _line_patterns(plugin: BasePlugin) -> list[re.Pattern[str]] | None:
    """Return the patterns that every secret the plugin finds on a line is a match of, or None when unknown.

    Every plugin of llm-guard's list reports matches of its `denylist` on the
    line, or a subset of them. The high-entropy plugins report matches of
    `regex` that pass the entropy limit, unless eager search is on, which
    only ad hoc string scans turn on. The private-key plugin can also report
    matches in the whole prompt.
    """
    if isinstance(plugin, RegexBasedDetector):
        return list(plugin.denylist)
    if isinstance(plugin, HighEntropyStringsPlugin):
        return [plugin.regex]
    return None


def _union_of_literals(patterns: list[re.Pattern[str]] | None) -> Literals | None:
    if patterns is None:
        return None
    literals: set[str] = set()
    for pattern in patterns:
        found = required_literals(pattern)
        if found is None:
            return None
        literals |= found
    return frozenset(literals)


def _joined_patterns(patterns: list[re.Pattern[str]] | None) -> tuple[re.Pattern[str], ...] | None:
    if patterns is None:
        return None
    joined = [joined_lines_pattern(pattern) for pattern in patterns]
    if any(pattern is None for pattern in joined):
        return None
    return tuple(joined)  # type: ignore[arg-type]


class _PluginGate:
    """Every plugin of a scanner, and the prefilters that rule plugins out for a whole pass."""

    def __init__(self, runners: Sequence[_PluginRunner]) -> None:
        self._runners = tuple(runners)
        # Distinct literals, so each is searched once per pass rather than once per plugin.
        self._literals = frozenset().union(*(runner.literals for runner in runners if runner.literals is not None))

    def present_literals(self, folded_text: str) -> frozenset[str]:
        """Return the literals that occur in `folded_text`, which `fold_case` produced."""
        return frozenset(literal for literal in self._literals if literal in folded_text)

    def runners_for_pass(self, present: frozenset[str], folded_prompt: str) -> list[_PluginRunner]:
        """Return the plugins that may find something in a pass whose lines contain the literals `present`.

        The private-key plugin is also kept when its literals occur in
        `folded_prompt`, because it also reads the whole prompt.
        """
        return [
            runner
            for runner in self._runners
            if runner.may_match_line(present) or (runner.reads_whole_file and runner.may_match_folded_text(folded_prompt))
        ]


class _Filters:
    """detect-secrets' filters, grouped as `scan_file` runs them: per line, per secret, per secret in context.

    File-name filters are left out: `scan_file` runs them on llm-guard's
    temporary file, which none of them skips.
    """

    def __init__(self, filters: Sequence[Callable[..., Any]]) -> None:
        self.line = _FilterStage(filters, required="line", passed={"filename", "line", "context"})
        self.secret = _FilterStage(filters, required="secret", passed={"filename", "secret", "plugin", "line"})
        self.context = _FilterStage(
            filters, required="context", passed={"filename", "secret", "plugin", "line", "context"}
        )


class _FilterStage:
    """The filters that detect-secrets' `_is_filtered_out` runs at one stage, in its order.

    A stage runs the filters that take the parameter `required`, each with
    the arguments it takes among those that `scan_file` passes there.
    """

    def __init__(self, filters: Sequence[Callable[..., Any]], *, required: str, passed: set[str]) -> None:
        self._filters = []
        for function in filters:
            names = set(get_injectable_variables(function))
            if required in names:
                self._filters.append((function, frozenset(names & passed)))

    def rejects(self, **arguments: Any) -> bool:
        """Return True when any filter skips the line or secret."""
        for function, names in self._filters:
            # detect-secrets skips a filter that raises TypeError, as a filter
            # does when an argument it needs was not passed.
            try:
                if function(**{name: arguments[name] for name in names}):
                    return True
            except TypeError:
                continue
        return False


class _InMemoryPrivateKeyDetector(PrivateKeyDetector):
    """detect-secrets' private-key plugin reading the prompt from memory instead of llm-guard's temporary file.

    On the first line where the line alone shows no key, the plugin searches
    the whole file when it is under 8 KiB, which finds a key whose body spans
    lines.
    """

    def __init__(self, content: str, size_bytes: int) -> None:
        super().__init__()
        self._content = content
        self._size_bytes = size_bytes

    def read_file(self, file_path: str) -> str:
        return self._content

    def get_file_size(self, file_path: str) -> int:
        return self._size_bytes


class _PromptScan:
    """One replay of `scan_file` on one prompt, by one thread."""

    def __init__(self, prompt: str, gate: _PluginGate, filters: _Filters, skip_failing_parses: bool) -> None:
        self._gate = gate
        self._filters = filters
        self._lines = PromptLines(prompt, PROMPT_FILENAME, skip_failing_parses)
        self._folded_content = fold_case(self._lines.content)
        # detect-secrets compares the size of llm-guard's UTF-8 file, whose
        # line endings are untranslated. "surrogatepass" keeps a lone
        # surrogate from raising here, where llm-guard's file write raises.
        size_bytes = len(prompt.encode("utf-8", "surrogatepass"))
        self._private_key = _InMemoryPrivateKeyDetector(self._lines.content, size_bytes)

    def run(self) -> set[DetectedSecret]:
        for lines in self._lines.passes():
            found = self._scan_lines(lines)
            if found:
                return found
        return set()

    def _scan_lines(self, lines: list[str]) -> set[DetectedSecret]:
        stripped = [line.strip() for line in lines]
        # One fold of the joined lines is cheaper than one per line, and no
        # character folds to or from "\n", so splitting gives the same lines.
        folded_text = fold_case("\n".join(stripped))
        folded = folded_text.split("\n")
        if len(folded) != len(stripped):
            # A transformed line with "\n" inside would shift the split lines.
            folded = [fold_case(line) for line in stripped]
        present = self._gate.present_literals(folded_text)
        runners = self._gate.runners_for_pass(present, self._folded_content)
        if not runners:
            return set()

        numbers = [number for number, line in enumerate(stripped, start=1) if MIN_LINE_LENGTH <= len(line) <= MAX_LINE_LENGTH]
        present_by_line = {
            number: frozenset(literal for literal in present if literal in folded[number - 1]) for number in numbers
        }
        runners_by_line: dict[int, list[_PluginRunner]] = {}
        for runner in runners:
            for number in self._lines_for(runner, numbers, present_by_line, stripped):
                runners_by_line.setdefault(number, []).append(runner)

        found: set[DetectedSecret] = set()
        for number in sorted(runners_by_line):
            found |= self._scan_line(lines, number, stripped[number - 1], runners_by_line[number])
        return found

    @staticmethod
    def _lines_for(
        runner: _PluginRunner, numbers: list[int], present_by_line: dict[int, frozenset[str]], stripped: list[str]
    ) -> list[int]:
        """Return the numbers of the lines that `runner` may find something on."""
        if runner.reads_whole_file:
            # It may read the whole prompt on any line, so it runs on every line.
            return numbers
        candidates = [number for number in numbers if runner.may_match_line(present_by_line[number])]
        if candidates and not runner.may_match_joined_lines("\n".join(stripped[number - 1] for number in candidates)):
            return []
        return candidates

    def _scan_line(self, lines: list[str], line_number: int, line: str, runners: list[_PluginRunner]) -> set[DetectedSecret]:
        context = get_code_snippet(lines=lines, line_number=line_number)
        arguments = {
            "filename": PROMPT_FILENAME,
            "line": line,
            "line_number": line_number,
            "context": context,
            "raw_context": get_code_snippet(lines=self._lines.raw_lines, line_number=line_number),
            "commit_hash": "",
        }

        # `scan_file` runs the line filters before any plugin, but one of them
        # (`is_indirect_reference`, a backtracking pattern) costs more on a
        # prose line than all plugins together. Here they run once a plugin
        # found something, and before the private-key plugin runs. The result
        # is the same, because calling any other plugin changes no state.
        rejected: bool | None = None
        found = set()
        for runner in runners:
            if runner.reads_whole_file and rejected is None:
                rejected = self._filters.line.rejects(filename=PROMPT_FILENAME, line=line, context=context)
            if rejected:
                return set()

            plugin = self._private_key if runner.reads_whole_file else runner.plugin
            secrets = runner.analyze_line(plugin, arguments)
            if secrets and rejected is None:
                rejected = self._filters.line.rejects(filename=PROMPT_FILENAME, line=line, context=context)
            if rejected:
                return set()

            for secret in secrets:
                if self._is_kept(secret.secret_value, plugin, line, context):
                    found.add(DetectedSecret(secret.type, secret.secret_value))
        return found

    def _is_kept(self, value: str, plugin: BasePlugin, line: str, context: CodeSnippet) -> bool:
        arguments = {"filename": PROMPT_FILENAME, "secret": value, "plugin": plugin, "line": line}
        if self._filters.secret.rejects(**arguments):
            return False
        return not self._filters.context.rejects(**arguments, context=context)
