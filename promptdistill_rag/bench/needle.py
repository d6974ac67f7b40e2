"""Needle-in-a-Haystack: a fact hidden at some depth of a long text, and a question about it."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from .grid import BenchCase, run_grid
from .presets import BenchConfig

__all__ = [
    "DEFAULT_KEYWORDS",
    "DEFAULT_NEEDLE",
    "DEFAULT_QUESTION",
    "NeedleCase",
    "build_needle_case",
    "check_lengths",
    "load_haystack",
    "needle_cases",
    "needle_score",
    "run_needle",
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


def check_lengths(engine, lengths: Sequence[int], max_new_tokens: int) -> None:
    """Raise ``ValueError`` unless every length is a positive int that fits the model with ``max_new_tokens``."""
    if not lengths:
        msg = "no context length given; pass at least one --lengths value in tokens"
        raise ValueError(msg)
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            msg = f"--lengths values must be positive token counts, got {length!r}"
            raise ValueError(msg)
    limit = engine.max_positions
    too_long = [length for length in lengths if limit is not None and length + max_new_tokens > limit]
    if too_long:
        msg = (
            f"--lengths {too_long[0]} plus {max_new_tokens} new tokens exceeds the model's {limit} positions; "
            f"use lengths up to {limit - max_new_tokens}"
        )
        raise ValueError(msg)


def needle_cases(
    tokenizer: PreTrainedTokenizerBase,
    haystack: str,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
) -> list[BenchCase]:
    """Build one benchmark case per length and depth, lengths in the outer loop.

    Raises:
        ValueError: If a keyword does not occur in the needle (the score could
            never reach 1), if a depth is outside ``[0, 1]``, or if the haystack is too short.
    """
    if not depths:
        msg = "no depth given; pass at least one --depths value in [0, 1]"
        raise ValueError(msg)
    missing = [keyword for keyword in keywords if needle_score(needle, [keyword]) == 0.0]
    if not keywords or missing:
        msg = (
            f"keywords {list(missing or keywords)} do not occur as words in the needle {needle!r}; "
            "pass --keywords from it"
        )
        raise ValueError(msg)
    score = functools.partial(needle_score, keywords=tuple(keywords))
    cases = []
    for length in lengths:
        for depth in depths:
            case = build_needle_case(tokenizer, haystack, length, depth, needle=needle, question=question)
            cases.append(
                BenchCase(
                    params={"context_tokens": length, "depth": depth},
                    generate_kwargs={"prompt": case.messages, "query": case.query},
                    score=score,
                    target=needle,
                )
            )
    return cases


def run_needle(
    engine,
    configs: Sequence[BenchConfig],
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    haystack: str,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the needle grid (lengths x depths) with every config; one result row per run.

    The row's ``score`` is ``needle_score`` of the answer and ``target_kept_share``
    the share of the needle's tokens that selection kept.

    Raises:
        ValueError: On lengths over the model's positions, bad depths or
            keywords, or a budget that a method cannot run.
    """
    check_lengths(engine, lengths, max_new_tokens)
    cases = needle_cases(
        engine.tokenizer, haystack, lengths, depths, needle=needle, question=question, keywords=keywords
    )
    return run_grid(engine, cases, configs, max_new_tokens=max_new_tokens, progress=progress, description="needle")
