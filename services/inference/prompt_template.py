"""A variant's prompt template, applied to the messages before they reach the backend."""

from __future__ import annotations

from collections.abc import Sequence

from shared.events import ChatMessage
from shared.experiments import PROMPT_PLACEHOLDER


def apply_prompt_template(messages: Sequence[ChatMessage], template: str | None) -> list[ChatMessage]:
    """Return a copy of `messages` whose last user message is wrapped in `template`.

    The user's text replaces the one `PROMPT_PLACEHOLDER` of the template,
    and other braces in either stay literal. A request sent as `prompt` is a
    single user message, so its prompt is the one wrapped. Messages without
    a user message, or a None template, are returned unchanged.
    """
    result = list(messages)
    if template is None:
        return result
    for index in range(len(result) - 1, -1, -1):
        if result[index].role == "user":
            wrapped = template.replace(PROMPT_PLACEHOLDER, result[index].content, 1)
            result[index] = result[index].model_copy(update={"content": wrapped})
            break
    return result
