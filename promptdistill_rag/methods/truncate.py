"""Truncation: cut the retrieved context to the budget before the model sees it."""

from __future__ import annotations

import torch

from ..config import TruncateConfig, resolve_keep
from ..prompt import PreparedPrompt
from .base import Method, PrefillResult, clamp_budget

__all__ = ["TruncateMethod", "truncate_indices"]

# Without a query, the last tokens of the prompt (the question and the chat
# template's assistant header) count as instructions and stay.
_PROTECTED_TAIL = 8


def _context_tokens(prepared: PreparedPrompt) -> list[list[int]]:
    """Return the context as a list of token runs, best first: the chunks, else the text before the query."""
    if prepared.chunk_spans:
        return [list(range(start, end)) for start, end in prepared.chunk_spans]
    length = len(prepared)
    end = prepared.query_span[0] if prepared.query_span is not None else max(0, length - _PROTECTED_TAIL)
    return [list(range(end))]


def truncate_indices(prepared: PreparedPrompt, keep: int) -> list[int]:
    """Return the prompt token indices that survive truncation to ``keep`` tokens.

    Every token outside the context survives. Context runs are taken in order
    while they fit; the first run that does not fit keeps its beginning.

    Raises:
        ValueError: If the tokens outside the context alone exceed ``keep``.

    Example:
        >>> truncate_indices(prepared, 100)  # doctest: +SKIP
    """
    length = len(prepared)
    runs = _context_tokens(prepared)
    context = {index for run in runs for index in run}
    fixed = length - len(context)
    budget = keep - fixed
    if budget < 0:
        msg = (
            f"keep={keep} tokens is fewer than the {fixed} tokens outside the retrieved context "
            "(instructions, question, chat template), which truncation always keeps"
        )
        raise ValueError(msg)
    kept = set(range(length)) - context
    for run in runs:
        if budget <= 0:
            break
        taken = run[:budget]
        kept.update(taken)
        budget -= len(taken)
    return sorted(kept)


class TruncateMethod(Method):
    """Cut the context to the budget before the model reads it, as RAG pipelines do without compression.

    The model then runs in full on the shorter prompt, at positions
    ``0..keep-1``. With ``chunks`` passed to ``generate`` (best first), whole
    low-ranked chunks go first; otherwise the text before the query loses its end.
    """

    name = "truncate"

    def _keep(self, prepared: PreparedPrompt) -> int:
        length = len(prepared)
        keep = resolve_keep(self.config.keep, length, self.config.min_keep)
        fixed = length - len({index for run in _context_tokens(prepared) for index in run})
        return clamp_budget(self.config.keep, keep, fixed, length, "instructions, question and chat template")

    def check(self, prepared: PreparedPrompt) -> None:
        self._keep(prepared)

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        keep = self._keep(prepared)
        length = len(prepared)
        if keep >= length:
            return self.unchanged_prefill(input_ids)
        kept = truncate_indices(prepared, keep)
        index = torch.tensor(kept, device=input_ids.device)
        result = self.full_prefill(input_ids.index_select(1, index))
        result.kept_tokens = [len(kept)]
        result.kept_indices = kept
        return result
