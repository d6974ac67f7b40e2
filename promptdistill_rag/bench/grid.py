"""Run every benchmark case with every method config and collect one result row per run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..prompt import PreparedPrompt
from .presets import BenchConfig, format_keep

__all__ = ["BenchCase", "check_cases", "run_grid", "span_kept_share", "text_token_span"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchCase:
    """One prompt of a benchmark and how its answers are scored.

    Attributes:
        params: The case's parameters, copied into every result row
            (``context_tokens`` and ``depth`` for the needle test, ``question_index``
            and ``position`` for RAG).
        generate_kwargs: ``prompt``, ``query`` and ``chunks`` for ``engine.generate``.
        score: Maps the answer text to a score in ``[0, 1]``.
        target: Where the fact the answer needs sits: a substring of the prompt
            text (the needle) or ``("chunk", i)`` for the i-th chunk; None for no target.
    """

    params: dict[str, Any]
    generate_kwargs: dict[str, Any]
    score: Callable[[str], float]
    target: str | tuple[str, int] | None = None


def text_token_span(prepared: PreparedPrompt, text: str) -> tuple[int, int] | None:
    """Return the token range ``[start, end)`` that covers the last occurrence of ``text`` in the prompt, or None."""
    start_char = prepared.text.rfind(text)
    if start_char < 0:
        return None
    end_char = start_char + len(text)
    tokens = [
        i for i, (start, end) in enumerate(prepared.offsets) if end > start_char and start < end_char and end > start
    ]
    if not tokens:
        return None
    return tokens[0], tokens[-1] + 1


def span_kept_share(span: tuple[int, int] | None, kept_indices: Sequence[int] | None, method: str) -> float | None:
    """Return the share of the span's tokens that survived selection.

    ``full`` keeps everything (1.0). Methods that keep different entries per
    layer and head (SnapKV, H2O) report no kept indices, so the share is None.
    """
    if span is None:
        return None
    if method == "full":
        return 1.0
    if kept_indices is None:
        return None
    start, end = span
    kept = sum(1 for index in kept_indices if start <= index < end)
    return kept / max(1, end - start)


def _target_span(prepared: PreparedPrompt, target) -> tuple[int, int] | None:
    if target is None:
        return None
    if isinstance(target, tuple):
        _, chunk = target
        return prepared.chunk_spans[chunk] if chunk < len(prepared.chunk_spans) else None
    return text_token_span(prepared, target)


def check_cases(
    engine, cases: Sequence[BenchCase], configs: Sequence[BenchConfig], max_new_tokens: int
) -> list[PreparedPrompt]:
    """Tokenize every case and check it against the model's length limit and every config's budget.

    This runs before any forward pass, so a bad budget or an oversized prompt
    fails in seconds rather than after an hour of runs.

    Raises:
        ValueError: If a prompt plus ``max_new_tokens`` exceeds the model's
            positions, or a method cannot run a config on a prompt.
    """
    methods = [(config, engine.method_for(config.config)) for config in configs]
    prepared_cases = []
    for case in cases:
        kwargs = case.generate_kwargs
        prepared = engine.prepare(kwargs["prompt"], query=kwargs.get("query"), chunks=kwargs.get("chunks"))
        limit = engine.max_positions
        if limit is not None and len(prepared) + max_new_tokens > limit:
            msg = (
                f"case {case.params} has {len(prepared)} prompt tokens; with {max_new_tokens} new tokens that "
                f"exceeds the model's {limit} positions. Use shorter lengths, fewer distractors or fewer new tokens."
            )
            raise ValueError(msg)
        for config, method in methods:
            try:
                method.check(prepared)
            except ValueError as error:
                msg = f"{config.label} cannot run case {case.params}: {error}"
                raise ValueError(msg) from error
        prepared_cases.append(prepared)
    return prepared_cases


def run_grid(
    engine,
    cases: Sequence[BenchCase],
    configs: Sequence[BenchConfig],
    *,
    max_new_tokens: int,
    progress: bool = True,
    description: str = "runs",
) -> list[dict[str, Any]]:
    """Answer every case with every config (greedy decoding) and return one row per run.

    Cases are the outer loop, so each prompt's methods run back to back on the
    same machine state. A row holds the case's parameters, the method and
    budget, the config, the answer, its score, the share of the target's
    tokens that selection kept, and every ``DistillStats`` field.

    Raises:
        ValueError: As ``check_cases``, before anything runs.
    """
    from tqdm.auto import tqdm

    prepared_cases = check_cases(engine, cases, configs, max_new_tokens)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(cases) * len(configs), desc=description, unit="run", file=sys.stderr, disable=not progress)
    try:
        for case, prepared in zip(cases, prepared_cases):
            span = _target_span(prepared, case.target)
            for config in configs:
                bar.set_postfix_str(config.label, refresh=False)
                result = engine.generate(**case.generate_kwargs, config=config.config, max_new_tokens=max_new_tokens)
                stats = result.stats.model_dump()
                row = {
                    **case.params,
                    "method": config.method,
                    "keep": format_keep(config.keep),
                    "variant": config.variant,
                    "label": config.label,
                    "score": float(case.score(result.text)),
                    "target_kept_share": span_kept_share(span, stats["kept_indices"], config.method),
                    "answer": result.text,
                    **stats,
                    "config": config.config.model_dump(),
                }
                rows.append(row)
                bar.update(1)
    finally:
        bar.close()
    return rows
