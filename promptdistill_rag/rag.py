"""One prompt format for retrieved passages plus a question, shared by the CLI, benchmarks and integrations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_INSTRUCTION", "RagPrompt", "build_rag_prompt", "normalize_passage"]

DEFAULT_INSTRUCTION = "Answer the question using the documents below. Answer briefly."

_BLANK_LINES = re.compile(r"\n\s*\n")


def normalize_passage(text: str) -> str:
    """Strip a passage and fold its blank lines into single line breaks.

    Blank lines then separate passages only, so a prompt split at blank lines
    gives back exactly the passages.
    """
    return _BLANK_LINES.sub("\n", text.strip())


@dataclass(frozen=True)
class RagPrompt:
    """A ready-to-send RAG prompt.

    Attributes:
        messages: Chat messages for ``engine.generate``.
        text: The user message's text (the same prompt, for string-prompt models).
        query: The question as it appears in the prompt; pass it as ``query``.
        chunks: The passages as they appear in the prompt, in the given (rank)
            order; pass them as ``chunks``.
    """

    messages: list[dict[str, str]]
    text: str
    query: str
    chunks: list[str]

    def generate_kwargs(self) -> dict[str, object]:
        """Return ``prompt``, ``query`` and ``chunks`` for ``engine.generate``."""
        return {"prompt": self.messages, "query": self.query, "chunks": self.chunks}


def build_rag_prompt(
    question: str,
    passages: Sequence[str],
    *,
    titles: Sequence[str | None] | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    system: str | None = None,
) -> RagPrompt:
    """Format retrieved passages and a question into one prompt.

    The passages come first, each headed ``Document [i]`` (with its title when
    given) and separated by blank lines; the question comes last, where the
    query selector finds it and where causal attention lets it see every passage.

    Args:
        question: The user's question.
        passages: Retrieved texts, best first.
        titles: Optional title per passage.
        instruction: The line before the documents.
        system: Optional system message.

    Raises:
        TypeError, ValueError: On an empty question, a non-string passage or
            titles of the wrong length.

    Example:
        >>> prompt = build_rag_prompt("Who wrote it?", ["Alice wrote it.", "Bob read it."])
        >>> prompt.chunks[0]
        'Document [1]: Alice wrote it.'
    """
    if not isinstance(question, str) or not question.strip():
        msg = f"question must be a non-empty string, got {question!r}"
        raise ValueError(msg)
    if isinstance(passages, str) or not isinstance(passages, Sequence):
        msg = f"passages must be a list of strings, got {type(passages).__name__}"
        raise TypeError(msg)
    if titles is not None and len(titles) != len(passages):
        msg = f"titles has {len(titles)} entries but passages has {len(passages)}"
        raise ValueError(msg)
    chunks = []
    for index, passage in enumerate(passages):
        if not isinstance(passage, str):
            msg = f"passage {index} must be a string, got {type(passage).__name__}"
            raise TypeError(msg)
        body = normalize_passage(passage)
        if not body:
            continue
        title = titles[index] if titles is not None else None
        header = f"Document [{index + 1}]" + (f" ({title.strip()})" if title and title.strip() else "")
        chunks.append(f"{header}: {body}")
    query = question.strip()
    sections = [instruction.strip(), *chunks, f"Question: {query}"]
    text = "\n\n".join(section for section in sections if section)
    messages = [{"role": "user", "content": text}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return RagPrompt(messages=messages, text=text, query=query, chunks=chunks)
