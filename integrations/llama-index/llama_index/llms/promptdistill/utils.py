"""Conversions between LlamaIndex's message and response types and the engine's, shared by the sync and async paths."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Optional

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    MessageRole,
    TextBlock,
)

from promptdistill_rag import GenerationResult, GenerationStream

__all__ = [
    "ROLES",
    "chat_dicts",
    "chat_response",
    "chat_stream",
    "completion_response",
    "completion_stream",
    "in_worker_threads",
]

logger = logging.getLogger(__name__)

ROLES: dict[MessageRole, str] = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}
"""LlamaIndex message roles and the chat-template role each becomes; tool and function roles have none."""


def message_text(message: ChatMessage, index: int) -> str:
    parts = []
    for block in message.blocks:
        if not isinstance(block, TextBlock):
            msg = (
                f"message {index} contains a block of type {type(block).__name__}, but PromptDistillLLM reads "
                "text only; pass text blocks"
            )
            raise ValueError(msg)
        parts.append(block.text)
    return "".join(parts)


def chat_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Convert LlamaIndex chat messages into the ``{"role", "content"}`` dicts that chat templates read."""
    converted = []
    for index, message in enumerate(messages):
        role = ROLES.get(message.role)
        if role is None:
            valid = ", ".join(sorted({r.value for r in ROLES}))
            msg = (
                f"message {index} has role {message.role.value!r}, which PromptDistillLLM does not support "
                f"(no tool or function calling); valid roles are {valid}"
            )
            raise ValueError(msg)
        converted.append({"role": role, "content": message_text(message, index)})
    return converted


def token_usage(result: GenerationResult) -> dict[str, int]:
    stats = result.stats
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    }


def raw_payload(result: GenerationResult) -> dict[str, Any]:
    # ``usage`` is where LlamaIndex's TokenCountingHandler looks for token counts.
    return {**result.model_dump(), "usage": token_usage(result)}


def additional_kwargs(result: GenerationResult) -> dict[str, Any]:
    # The kept token indices can run to thousands of numbers, so only raw["stats"] contains them.
    return {**token_usage(result), "distill_stats": result.stats.model_dump(exclude={"kept_indices"})}


def completion_response(result: GenerationResult) -> CompletionResponse:
    """Build a completion response that carries the text, the stats and the token counts."""
    return CompletionResponse(text=result.text, raw=raw_payload(result), additional_kwargs=additional_kwargs(result))


def chat_response(result: GenerationResult) -> ChatResponse:
    """Build an assistant chat response that carries the text, the stats and the token counts."""
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
        raw=raw_payload(result),
        additional_kwargs=additional_kwargs(result),
    )


def stream_results(stream: GenerationStream) -> Iterator[tuple[str, str, Optional[GenerationResult]]]:
    """Yield ``(delta, text so far, None)`` per piece, then ``("", text, result)`` once the stream ends.

    The closing item carries the stats, which exist only after the last
    piece. It also makes sure a stream yields something when the model stops at once.
    """
    text = ""
    try:
        for piece in stream:
            text += piece
            yield piece, text, None
    finally:
        stream.close()
    result = stream.result
    if result is None:
        msg = "the engine's stream ended without a result"
        raise RuntimeError(msg)
    yield "", result.text, result


def completion_stream(stream: GenerationStream) -> CompletionResponseGen:
    """Turn an engine stream into completion responses with ``delta`` and ``text``; the last carries the stats."""
    for delta, text, result in stream_results(stream):
        if result is None:
            yield CompletionResponse(text=text, delta=delta)
        else:
            yield CompletionResponse(
                text=text, delta=delta, raw=raw_payload(result), additional_kwargs=additional_kwargs(result)
            )


def chat_stream(stream: GenerationStream) -> ChatResponseGen:
    """Turn an engine stream into assistant chat responses with ``delta``; the last carries the stats."""
    for delta, text, result in stream_results(stream):
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        if result is None:
            yield ChatResponse(message=message, delta=delta)
        else:
            yield ChatResponse(
                message=message, delta=delta, raw=raw_payload(result), additional_kwargs=additional_kwargs(result)
            )


_END = object()


async def in_worker_threads(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """Iterate ``iterator`` with each step in a worker thread, so the event loop stays free."""
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:
                # A cancelled step may still run in its worker thread; the
                # generator then finishes that step and is closed when collected.
                logger.debug("stream is still running in a worker thread; it stops when collected")
