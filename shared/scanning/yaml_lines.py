"""Loading YAML while keeping the node tree, so that a validation error can name the line of the key it is about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


def load_with_nodes(text: str) -> tuple[Any, yaml.Node | None]:
    """Return the data of a one-document YAML text, as `yaml.safe_load` does, and its node tree (None when empty).

    Raises `yaml.YAMLError` when the text is not YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def line_of(root: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """Return the 1-based line of the deepest key or list item of `path` that the tree contains; None without a tree.

    `path` is a pydantic error location such as `("tenants", "acme", "input", 0, "options")`.
    A part that names no key or item, such as the tag that pydantic adds
    for a discriminated union, is skipped.
    """
    if root is None:
        return None
    node = root
    line = root.start_mark.line + 1
    for part in path:
        found = _child(node, part)
        if found is not None:
            node, line = found
    return line


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                # The key's line, because that is where a misspelt or invalid field is written.
                return value, key.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None
