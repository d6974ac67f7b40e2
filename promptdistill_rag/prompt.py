"""Turn a prompt (a string or chat messages) into token ids plus the spans selection needs.

The spans are token index ranges: where the user's query sits, where each
retrieved chunk sits, and which sentence every token belongs to.
They are computed once on the host, before the forward pass, from the fast
tokenizer's character offsets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from transformers import PreTrainedTokenizerBase

__all__ = ["ChatMessage", "Prompt", "PreparedPrompt", "prepare_prompt", "render_prompt"]

ChatMessage = Mapping[str, str]
"""A chat message: ``{"role": "user", "content": "..."}``."""

Prompt = Union[str, Sequence[ChatMessage]]
"""A prompt: a string used as is, or chat messages rendered with the tokenizer's chat template."""

# A sentence ends at ., ! or ? followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class PreparedPrompt:
    """A tokenized prompt and the token spans that selection uses.

    Attributes:
        text: The prompt text the tokens came from (after chat rendering).
        input_ids: Token ids, with exactly one BOS where the model uses one.
        offsets: Character span ``(start, end)`` of each token in ``text``;
            special tokens that the tokenizer added have ``(0, 0)``.
        query_span: Token range ``[start, end)`` of the query, or None.
        chunk_spans: Token range of each chunk passed by the caller, in the
            caller's (rank) order; empty when no chunks were given.
    """

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    query_span: tuple[int, int] | None = None
    chunk_spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def sentence_ids(self) -> list[int]:
        """Return, for each token, the index of the sentence that contains it."""
        return self._unit_ids(_SENTENCE_END)

    def chunk_ids(self) -> list[int]:
        """Return, for each token, a unit index: one per caller chunk, and one per sentence elsewhere.

        Without chunks every unit is a sentence: blank lines are no reliable
        passage boundary (an essay may hold none, making one unit of it all).
        Tokens outside every chunk (instructions, the template) are grouped by
        sentence too, so they never ride along with a chunk.
        """
        sentences = self.sentence_ids()
        if not self.chunk_spans:
            return sentences
        unit = [-1] * len(self.input_ids)
        for index, (start, end) in enumerate(self.chunk_spans):
            for token in range(start, end):
                unit[token] = index
        offset = len(self.chunk_spans)
        return [value if value >= 0 else offset + sentences[token] for token, value in enumerate(unit)]

    def _unit_ids(self, boundary: re.Pattern[str]) -> list[int]:
        # Character positions where a new unit starts, then each token joins the
        # unit that contains its first character.
        starts = [match.end() for match in boundary.finditer(self.text)]
        unit_ids = []
        unit = 0
        for token_start, _ in self.offsets:
            while unit < len(starts) and token_start >= starts[unit]:
                unit += 1
            unit_ids.append(unit)
        return unit_ids


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """Return the prompt text: a string as is, or chat messages through the chat template.

    Raises:
        TypeError: If the prompt or a message has the wrong type.
        ValueError: If the prompt is empty, a message lacks ``role`` or ``content``,
            or the tokenizer has no chat template.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            msg = "prompt is empty; pass the text or chat messages to answer"
            raise ValueError(msg)
        return prompt
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        msg = f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
        raise TypeError(msg)
    if not prompt:
        msg = "prompt is an empty list of messages; pass at least one message"
        raise ValueError(msg)
    messages = []
    for index, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            msg = f"message {index} must be a dict with 'role' and 'content', got {type(message).__name__}"
            raise TypeError(msg)
        missing = {"role", "content"} - set(message)
        if missing:
            msg = f"message {index} is missing {sorted(missing)}; each message needs 'role' and 'content'"
            raise ValueError(msg)
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            msg = (
                f"message {index} must have string 'role' and 'content', got role of type "
                f"{type(role).__name__} and content of type {type(content).__name__}"
            )
            raise TypeError(msg)
        messages.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in messages):
        msg = "every message's content is empty; pass some text to answer"
        raise ValueError(msg)
    if not getattr(tokenizer, "chat_template", None):
        msg = (
            "this tokenizer has no chat template, so chat messages cannot be rendered; "
            "pass the prompt as a string instead"
        )
        raise ValueError(msg)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _find_span(text: str, needle: str, what: str) -> tuple[int, int]:
    if not isinstance(needle, str):
        msg = f"{what} must be a string, got {type(needle).__name__}"
        raise TypeError(msg)
    stripped = needle.strip()
    if not stripped:
        msg = f"{what} is empty; pass the text as it appears in the prompt, or None"
        raise ValueError(msg)
    # The query is usually the question at the end of the prompt, so the last
    # occurrence is the one meant when the same text also appears in the context.
    start = text.rfind(stripped)
    if start < 0:
        preview = stripped if len(stripped) <= 80 else stripped[:77] + "..."
        msg = f"{what} {preview!r} was not found in the prompt; pass it exactly as it appears there"
        raise ValueError(msg)
    return start, start + len(stripped)


def _chars_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    # A token belongs to the span when its characters overlap it, so a token
    # that merges the span's first character with a leading space counts.
    first = last = None
    for index, (token_start, token_end) in enumerate(offsets):
        if token_end > start and token_start < end and token_end > token_start:
            if first is None:
                first = index
            last = index
    if first is None or last is None:
        msg = f"no token covers characters {start}..{end} of the prompt"
        raise ValueError(msg)
    return first, last + 1


def prepare_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    *,
    query: str | None = None,
    chunks: Sequence[str] | None = None,
) -> PreparedPrompt:
    """Tokenize a prompt and locate the query and the chunks in it.

    A string prompt is tokenized as the tokenizer does by default; chat
    messages go through the chat template. Either way the result holds exactly
    one BOS token where the tokenizer uses one, even when the rendered text
    already starts with it.

    Args:
        tokenizer: A fast (Rust-backed) tokenizer, which reports character offsets.
        prompt: The prompt text or chat messages.
        query: The user's question as it appears in the prompt (last occurrence wins).
        chunks: Retrieved passages as they appear in the prompt, best first.

    Raises:
        TypeError: On wrong input types.
        ValueError: On an empty prompt, or a query or chunk not found in it.

    Example:
        >>> prepared = prepare_prompt(tokenizer, "Context: ... Question: Why?", query="Why?")
        >>> prepared.query_span  # doctest: +SKIP
        (5, 7)
    """
    if not getattr(tokenizer, "is_fast", False):
        msg = (
            f"{type(tokenizer).__name__} is not a fast tokenizer; selection needs character offsets, "
            "so load the tokenizer with use_fast=True"
        )
        raise TypeError(msg)
    text = render_prompt(tokenizer, prompt)
    bos = tokenizer.bos_token
    add_special_tokens = not (bos and text.startswith(bos))
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and len(input_ids) > 1 and input_ids[0] == bos_id and input_ids[1] == bos_id:
        input_ids, offsets = input_ids[1:], offsets[1:]
    if not input_ids:
        msg = "prompt produced no tokens"
        raise ValueError(msg)

    query_span = None
    if query is not None:
        query_span = _chars_to_tokens(offsets, *_find_span(text, query, "query"))

    chunk_spans = []
    if chunks is not None:
        if isinstance(chunks, str) or not isinstance(chunks, Sequence):
            msg = f"chunks must be a list of strings, got {type(chunks).__name__}"
            raise TypeError(msg)
        for index, chunk in enumerate(chunks):
            start, end = _find_chunk(text, chunk, index)
            chunk_spans.append(_chars_to_tokens(offsets, start, end))
    return PreparedPrompt(
        text=text,
        input_ids=input_ids,
        offsets=offsets,
        query_span=query_span,
        chunk_spans=chunk_spans,
    )


def _find_chunk(text: str, chunk: str, index: int) -> tuple[int, int]:
    if not isinstance(chunk, str):
        msg = f"chunk {index} must be a string, got {type(chunk).__name__}"
        raise TypeError(msg)
    stripped = chunk.strip()
    if not stripped:
        msg = f"chunk {index} is empty"
        raise ValueError(msg)
    start = text.find(stripped)
    if start < 0:
        preview = stripped if len(stripped) <= 60 else stripped[:57] + "..."
        msg = f"chunk {index} ({preview!r}) was not found in the prompt; pass chunks exactly as they appear there"
        raise ValueError(msg)
    return start, start + len(stripped)
