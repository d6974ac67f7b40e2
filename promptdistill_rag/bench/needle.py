"""Needle-in-a-Haystack: a fact hidden at some depth of a long text, and a question about it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_KEYWORDS",
    "DEFAULT_NEEDLE",
    "DEFAULT_QUESTION",
    "NeedleCase",
    "build_needle_case",
    "load_haystack",
    "needle_score",
]

DEFAULT_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_KEYWORDS = ("sandwich", "dolores", "park", "sunny")
_INSTRUCTION = "Read the text below, then answer the question at the end with one sentence."
_WORD = re.compile(r"[a-z0-9]+")


def load_haystack(haystack_dir: str | Path | None = None) -> str:
    """Return the haystack text: every ``.txt`` file under ``haystack_dir`` in name order, else Python's documentation topics.

    The default needs no files: ``pydoc_data.topics`` ships with CPython.

    Raises:
        FileNotFoundError: If ``haystack_dir`` holds no ``.txt`` files.
    """
    if haystack_dir is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[name].strip() for name in sorted(topics))
    folder = Path(haystack_dir)
    files = sorted(folder.rglob("*.txt"))
    if not files:
        msg = f"no .txt files under {folder}; pass a folder of plain-text documents"
        raise FileNotFoundError(msg)
    return "\n\n".join(path.read_text(encoding="utf-8", errors="replace").strip() for path in files)


@dataclass(frozen=True)
class NeedleCase:
    """One Needle-in-a-Haystack prompt.

    Attributes:
        messages: Chat messages to send.
        query: The question as it appears in the prompt.
        context_tokens: Requested prompt length in tokens.
        depth: Requested needle depth, a fraction of the haystack.
        needle: The hidden sentence.
    """

    messages: list[dict[str, str]]
    query: str
    context_tokens: int
    depth: float
    needle: str


def build_needle_case(
    tokenizer: PreTrainedTokenizerBase,
    haystack: str,
    context_tokens: int,
    depth: float,
    *,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
) -> NeedleCase:
    """Build a prompt of about ``context_tokens`` tokens with ``needle`` at ``depth`` of the haystack.

    The haystack is cut to fit, the needle goes in at the sentence boundary
    just before the requested depth (as in the usual NIAH harnesses), and the
    question follows the text.

    Raises:
        ValueError: If ``depth`` is outside ``[0, 1]`` or the haystack is too short.
    """
    if not 0.0 <= depth <= 1.0:
        msg = f"depth must be in [0, 1], got {depth}"
        raise ValueError(msg)
    overhead = len(tokenizer(f"{_INSTRUCTION}\n\n{needle}\n\nQuestion: {question}").input_ids) + 40
    budget = context_tokens - overhead
    if budget <= 0:
        msg = f"context_tokens={context_tokens} leaves no room for a haystack around the needle and question"
        raise ValueError(msg)
    encoding = tokenizer(haystack, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoding["input_ids"]) < budget:
        msg = f"the haystack has {len(encoding['input_ids'])} tokens, fewer than the {budget} needed"
        raise ValueError(msg)
    text = haystack[: encoding["offset_mapping"][budget - 1][1]]
    cut = int(len(text) * depth)
    boundary = text.rfind(". ", 0, cut)
    insert_at = 0 if depth == 0.0 or boundary < 0 else boundary + 2
    if depth == 1.0:
        insert_at = len(text)
    body = text[:insert_at] + (" " if insert_at and not text[:insert_at].endswith(" ") else "") + needle + " " + text[insert_at:]
    content = f"{_INSTRUCTION}\n\n{body.strip()}\n\nQuestion: {question}"
    return NeedleCase(
        messages=[{"role": "user", "content": content}],
        query=question,
        context_tokens=context_tokens,
        depth=depth,
        needle=needle,
    )


def needle_score(answer: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> float:
    """Return the share of ``keywords`` that occur as words in ``answer`` (case-insensitive).

    Example:
        >>> needle_score("Eat a sandwich in Dolores Park.")
        0.75
    """
    words = set(_WORD.findall(answer.lower()))
    if not keywords:
        return 0.0
    return sum(1 for keyword in keywords if keyword.lower() in words) / len(keywords)
