"""Turn LangChain messages into the engine's chat messages, and read the retrieval hints they carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage

from ._common import HINTS_KEY

_CHAT_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class RetrievalHints:
    """The question and the passages of a RAG prompt, as they appear in its text."""

    query: str | None = None
    chunks: list[str] | None = None


def message_text(message: BaseMessage, index: int) -> str:
    """Return a message's text: string content as is, text blocks joined.

    Raises:
        ValueError: If the content has anything but text (images, audio, files, tool calls).
    """
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            msg = (
                f"message {index} ({type(message).__name__}) has a content block of type {kind!r}; "
                "the model reads text only, so pass text content"
            )
            raise ValueError(msg)
    return "".join(parts)


def _role(message: BaseMessage, index: int) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, AIMessage):
        if message.tool_calls or message.invalid_tool_calls:
            msg = f"message {index} is an AIMessage with tool calls; the model has no tool calling"
            raise ValueError(msg)
        return "assistant"
    if isinstance(message, ChatMessage):
        if message.role not in _CHAT_ROLES:
            msg = (
                f"message {index} is a ChatMessage with role {message.role!r}; "
                f"accepted roles: {', '.join(sorted(_CHAT_ROLES))}"
            )
            raise ValueError(msg)
        return message.role
    msg = (
        f"message {index} is a {type(message).__name__}; the model takes only SystemMessage, "
        "HumanMessage and AIMessage (it has no tool calling)"
    )
    raise TypeError(msg)


def is_user_message(message: BaseMessage) -> bool:
    """Return whether the message is a human turn (a ``HumanMessage`` or a ``ChatMessage`` with role user)."""
    return isinstance(message, HumanMessage) or (isinstance(message, ChatMessage) and message.role == "user")


def to_chat_messages(messages: Sequence[BaseMessage], *, require_user_last: bool = True) -> list[dict[str, str]]:
    """Return ``{"role", "content"}`` dicts for the engine's chat template.

    Raises:
        ValueError: On an empty list, non-text content, or (with
            ``require_user_last``) a conversation that does not end with a human message.
        TypeError: On a message type the model cannot take (tool and function messages).
    """
    if not messages:
        msg = "received no messages; pass at least one HumanMessage"
        raise ValueError(msg)
    converted = [{"role": _role(message, index), "content": message_text(message, index)} for index, message in enumerate(messages)]
    if require_user_last and not is_user_message(messages[-1]):
        msg = (
            f"the last message is a {type(messages[-1]).__name__}, but the model answers a human turn; "
            "end the messages with a HumanMessage"
        )
        raise ValueError(msg)
    return converted


def hints_of(message: BaseMessage) -> RetrievalHints:
    """Return the retrieval hints stored in a message's ``additional_kwargs`` (empty hints if none).

    Raises:
        ValueError: If the hints are present but malformed.
    """
    raw = message.additional_kwargs.get(HINTS_KEY)
    if raw is None:
        return RetrievalHints()
    if not isinstance(raw, Mapping):
        msg = f"additional_kwargs[{HINTS_KEY!r}] must be a dict with 'query' and 'chunks', got {type(raw).__name__}"
        raise ValueError(msg)
    query = raw.get("query")
    chunks = raw.get("chunks")
    if query is not None and not isinstance(query, str):
        msg = f"additional_kwargs[{HINTS_KEY!r}]['query'] must be a string, got {type(query).__name__}"
        raise ValueError(msg)
    if chunks is not None and (
        isinstance(chunks, str) or not isinstance(chunks, Sequence) or not all(isinstance(c, str) for c in chunks)
    ):
        msg = f"additional_kwargs[{HINTS_KEY!r}]['chunks'] must be a list of strings"
        raise ValueError(msg)
    return RetrievalHints(query=query, chunks=list(chunks) if chunks is not None else None)


def last_user_hints(messages: Sequence[BaseMessage]) -> RetrievalHints:
    """Return the hints of the last human message, or empty hints."""
    for message in reversed(messages):
        if is_user_message(message):
            return hints_of(message)
    return RetrievalHints()
