"""The interface of every prefill method: a host-side check and a prefill."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..prompt import PreparedPrompt
from ..runtime import ForwardState, ModelRunner

__all__ = ["Method", "PrefillResult", "clamp_budget", "protected_tokens"]

logger = logging.getLogger(__name__)


@dataclass
class PrefillResult:
    """The outcome of a method's prefill, from which decoding continues.

    Attributes:
        logits: ``(1, vocab)`` float32 logits for the first generated token.
        state: The forward state (cache, entry positions, decode observer).
        next_position: Position of the first generated token.
        kept_tokens: Prompt tokens the model still reads after each selection
            stage (one value, the prompt length, when nothing was dropped).
        kept_indices: Prompt token indices that survived, in order; None for
            methods that keep different entries per layer or head.
        selection_layers: Layers where a selection happened.
        query_source: ``"query"`` when the caller's query drove selection,
            ``"last_token"`` when the last prompt token did, None when nothing was selected.
    """

    logits: torch.Tensor
    state: ForwardState
    next_position: int
    kept_tokens: list[int]
    kept_indices: list[int] | None
    selection_layers: list[int] = field(default_factory=list)
    query_source: str | None = None


def protected_tokens(prepared: PreparedPrompt, *, sink: int = 0, suffix: int = 1) -> list[bool]:
    """Return, per prompt token, whether it must survive: the query, the first ``sink`` and last ``suffix`` tokens."""
    length = len(prepared)
    protected = [False] * length
    for index in range(min(sink, length)):
        protected[index] = True
    for index in range(max(0, length - suffix), length):
        protected[index] = True
    if prepared.query_span is not None:
        start, end = prepared.query_span
        for index in range(start, end):
            protected[index] = True
    return protected


def clamp_budget(spec: int | float, keep: int, floor: int, length: int, what: str) -> int:
    """Return ``keep`` raised to ``floor`` for a fractional budget; raise for a count below ``floor``.

    A fraction is a budget meant for long prompts; on a short prompt it yields
    to the tokens that must stay (with a warning) instead of failing. An
    explicit count below them is a mistake worth an error.

    Args:
        spec: The budget as configured (int count or float fraction).
        keep: The budget resolved for this prompt.
        floor: Tokens the method always keeps.
        length: Prompt tokens.
        what: What the floor consists of, for messages.

    Raises:
        ValueError: If ``spec`` is an int below ``floor``.
    """
    if keep >= floor or keep >= length:
        return keep
    if isinstance(spec, int):
        msg = (
            f"keep={spec} is fewer than the {floor} tokens of this {length}-token prompt that are always "
            f"kept ({what}); raise keep to at least {floor}"
        )
        raise ValueError(msg)
    logger.warning(
        "keep=%s is %d tokens of this %d-token prompt, fewer than the %d always kept (%s); keeping %d",
        spec,
        keep,
        length,
        floor,
        what,
        floor,
    )
    return floor


class Method(ABC):
    """A way to run the prefill: the full model or one of the compression methods.

    Args:
        config: The method's validated config.
        runner: The model runner that owns the forward passes.
    """

    name: ClassVar[str]

    def __init__(self, config, runner: ModelRunner) -> None:
        self.config = config
        self.runner = runner

    @abstractmethod
    def check(self, prepared: PreparedPrompt) -> None:
        """Raise ``ValueError`` if the config cannot run on this prompt; runs before any compute."""

    @abstractmethod
    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        """Run the prompt through the model and return the state to decode from.

        Args:
            prepared: The tokenized prompt and its spans.
            input_ids: ``(1, n)`` token ids on the model's input device.
        """

    def new_state(self) -> ForwardState:
        """Return a fresh forward state with an empty cache."""
        return ForwardState(
            cache=self.runner.new_cache(), base_kind=self.runner.base_kind, num_layers=self.runner.num_layers
        )

    def unchanged_prefill(self, input_ids: torch.Tensor) -> PrefillResult:
        """Run the plain model and report every prompt token as kept (a budget that drops nothing)."""
        result = self.full_prefill(input_ids)
        result.kept_indices = list(range(input_ids.shape[1]))
        return result

    def full_prefill(self, input_ids: torch.Tensor, state: ForwardState | None = None) -> PrefillResult:
        """Run the plain model on ``input_ids`` at positions ``0..n-1``."""
        state = state if state is not None else self.new_state()
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device).view(1, -1)
        logits = self.runner.forward(input_ids, positions, state)
        return PrefillResult(
            logits=logits, state=state, next_position=length, kept_tokens=[length], kept_indices=None
        )
