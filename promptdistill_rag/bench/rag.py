"""RAG question answering from Natural Questions: a gold passage among distractors."""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..rag import RagPrompt, build_rag_prompt
from .grid import BenchCase, run_grid
from .presets import BenchConfig

__all__ = [
    "POSITIONS",
    "QAItem",
    "RagCase",
    "build_rag_case",
    "is_correct",
    "load_nq",
    "normalize_answer",
    "rag_cases",
    "run_rag",
]

POSITIONS = ("first", "middle", "last")
"""Gold passage positions among the distractors."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class QAItem:
    """A question with its accepted answers and gold passage."""

    question: str
    answers: tuple[str, ...]
    title: str
    passage: str


def load_nq(path: str | Path, limit: int | None = None) -> list[QAItem]:
    """Read the ``nq-open-oracle`` JSON-lines file (gzip or plain).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a line lacks ``question``, ``answers`` or a gold passage.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path} not found; pass the nq-open-oracle JSON-lines file"
        raise FileNotFoundError(msg)
    opener = gzip.open if path.suffix == ".gz" else open
    items = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                context = record["ctxs"][0]
                items.append(
                    QAItem(
                        question=record["question"],
                        answers=tuple(record["answers"]),
                        title=context.get("title", ""),
                        passage=context["text"],
                    )
                )
            except (KeyError, IndexError) as error:
                msg = f"{path}:{number} lacks question, answers or ctxs[0].text"
                raise ValueError(msg) from error
            if limit is not None and len(items) >= limit:
                break
    return items


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (the usual open-domain QA normalisation)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_correct(output: str, answers: Sequence[str]) -> bool:
    """Return whether a normalised accepted answer occurs in the normalised output."""
    normalized = normalize_answer(output)
    return any(normalize_answer(answer) and normalize_answer(answer) in normalized for answer in answers)


@dataclass(frozen=True)
class RagCase:
    """One RAG prompt: the question's gold passage at ``gold_index`` among distractors."""

    item: QAItem
    prompt: RagPrompt
    gold_index: int


def build_rag_case(
    items: Sequence[QAItem], index: int, distractors: int, position: str, *, seed: int = 0
) -> RagCase:
    """Build the prompt for ``items[index]`` with ``distractors`` other gold passages around its own.

    Distractors are other questions' gold passages, drawn with a seed that
    depends on the question, so every method sees the same prompt.
    ``position`` is ``"first"``, ``"middle"`` or ``"last"``.

    Raises:
        ValueError: On an unknown position or too few items for the distractors.
    """
    positions = {"first", "middle", "last"}
    if position not in positions:
        msg = f"position must be one of {sorted(positions)}, got {position!r}"
        raise ValueError(msg)
    if distractors >= len(items):
        msg = f"{distractors} distractors need at least {distractors + 1} items, got {len(items)}"
        raise ValueError(msg)
    item = items[index]
    rng = random.Random(seed * 1_000_003 + index)
    others = [i for i in range(len(items)) if i != index and items[i].passage != item.passage]
    chosen = rng.sample(others, distractors)
    gold_index = {"first": 0, "middle": distractors // 2, "last": distractors}[position]
    order = [items[i] for i in chosen]
    order.insert(gold_index, item)
    prompt = build_rag_prompt(item.question, [x.passage for x in order], titles=[x.title for x in order])
    return RagCase(item=item, prompt=prompt, gold_index=gold_index)


def _answer_score(answers: tuple[str, ...], output: str) -> float:
    return 1.0 if is_correct(output, answers) else 0.0


def rag_cases(
    items: Sequence[QAItem],
    *,
    questions: int,
    offset: int = 0,
    distractors: int = 19,
    positions: Sequence[str] = POSITIONS,
) -> list[BenchCase]:
    """Build a case for each of ``questions`` items from ``offset`` on, at each gold position.

    Distractors come from all of ``items``, not only the benchmarked questions.

    Raises:
        ValueError: On a count or offset outside the data, a negative number of
            distractors, or an unknown position.
    """
    if questions < 1:
        msg = f"--questions must be at least 1, got {questions}"
        raise ValueError(msg)
    if offset < 0 or offset + questions > len(items):
        msg = (
            f"--offset {offset} with --questions {questions} needs {offset + questions} items, "
            f"but the file has {len(items)}"
        )
        raise ValueError(msg)
    if distractors < 0:
        msg = f"--distractors must be 0 or more, got {distractors}"
        raise ValueError(msg)
    unknown = [position for position in positions if position not in POSITIONS]
    if not positions or unknown:
        msg = f"--positions must be some of {', '.join(POSITIONS)}, got {list(positions)}"
        raise ValueError(msg)
    cases = []
    for index in range(offset, offset + questions):
        for position in positions:
            case = build_rag_case(items, index, distractors, position)
            cases.append(
                BenchCase(
                    params={
                        "question_index": index,
                        "position": position,
                        "gold_index": case.gold_index,
                        "distractors": distractors,
                        "question": case.item.question,
                        "answers": list(case.item.answers),
                    },
                    generate_kwargs=case.prompt.generate_kwargs(),
                    score=functools.partial(_answer_score, case.item.answers),
                    target=("chunk", case.gold_index),
                )
            )
    return cases


def run_rag(
    engine,
    configs: Sequence[BenchConfig],
    *,
    items: Sequence[QAItem],
    questions: int,
    offset: int = 0,
    distractors: int = 19,
    positions: Sequence[str] = POSITIONS,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Answer every question at every gold position with every config; one result row per run.

    The row's ``score`` is 1.0 when ``is_correct`` accepts the answer, and
    ``target_kept_share`` the share of the gold passage's tokens that selection kept.

    Raises:
        ValueError: As ``rag_cases``, or when a prompt does not fit the model.
    """
    cases = rag_cases(items, questions=questions, offset=offset, distractors=distractors, positions=positions)
    return run_grid(engine, cases, configs, max_new_tokens=max_new_tokens, progress=progress, description="rag")
