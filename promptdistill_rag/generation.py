"""Decoding pieces: sampling settings, token choice, and text assembly with stop strings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = ["SamplingParams", "TextAssembler", "normalize_stop"]


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    Attributes:
        temperature: 0 means greedy decoding; above 0 samples from the softened distribution.
        top_p: Nucleus sampling mass in ``(0, 1]``.
        top_k: Sample among the ``top_k`` most likely tokens; None for no limit.
        seed: Seed of the sampling generator, for reproducible samples.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        temperature, top_p, top_k, seed = self.temperature, self.top_p, self.top_k, self.seed
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
            msg = f"temperature must be a finite number >= 0, got {temperature!r}"
            raise ValueError(msg)
        if temperature < 0:
            msg = f"temperature must be >= 0 (0 is greedy decoding), got {temperature}"
            raise ValueError(msg)
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            msg = f"top_p must be a number in (0, 1], got {top_p!r}"
            raise ValueError(msg)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            msg = f"top_k must be a positive int or None, got {top_k!r}"
            raise ValueError(msg)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            msg = f"seed must be an int or None, got {seed!r}"
            raise ValueError(msg)

    @property
    def greedy(self) -> bool:
        """Whether decoding picks the most likely token."""
        return self.temperature == 0

    def make_picker(self, device: torch.device):
        """Return a function from ``(1, vocab)`` float32 logits to a ``(1,)`` token id tensor."""
        if self.greedy:
            return lambda logits: logits.argmax(dim=-1)
        warpers = LogitsProcessorList([TemperatureLogitsWarper(float(self.temperature))])
        if self.top_k is not None:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(self.top_p)))
        generator = torch.Generator(device=device)
        if self.seed is not None:
            generator.manual_seed(self.seed)
        else:
            generator.seed()

        def pick(logits: torch.Tensor) -> torch.Tensor:
            # The warpers ignore the input ids, but their signature takes them.
            scores = warpers(None, logits)
            probabilities = torch.softmax(scores, dim=-1)
            return torch.multinomial(probabilities, 1, generator=generator).view(-1)

        return pick


def normalize_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Return stop strings as a tuple, rejecting empty strings and wrong types."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence):
        msg = f"stop must be a string, a list of strings or None, got {type(stop).__name__}"
        raise TypeError(msg)
    result = []
    for item in stop:
        if not isinstance(item, str):
            msg = f"stop strings must be strings, got {item!r} ({type(item).__name__})"
            raise TypeError(msg)
        if not item:
            msg = "stop strings must not be empty"
            raise ValueError(msg)
        result.append(item)
    return tuple(result)


class TextAssembler:
    """Turn generated token ids into text pieces that are safe to show.

    Every step decodes all generated ids and releases the new text, except a
    trailing incomplete UTF-8 character and any tail that could still grow
    into a stop string. When a stop string appears, the text ends just before
    it. The pieces joined equal the final text.

    Args:
        tokenizer: The model's tokenizer.
        stop: Stop strings.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.text = ""
        self._released = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add a token and return the newly released text (possibly empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        self.text = text
        cut = self._find_stop(text)
        if cut is not None:
            # Released text never ends inside a stop string, so the cut is not
            # before it; max() keeps "pieces joined == text" even if decoding
            # rewrote earlier characters.
            cut = max(cut, self._released)
            self.stopped = True
            self.text = text[:cut]
            return self._release(cut)
        safe = len(text)
        while safe > self._released and text[safe - 1] == "\ufffd":
            safe -= 1
        safe -= self._stop_prefix_length(text[:safe])
        return self._release(safe)

    def finish(self) -> str:
        """Release whatever is still held back; call once after the last token."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self._released:
            return ""
        piece = self.text[self._released : end]
        self._released = end
        return piece

    def _find_stop(self, text: str) -> int | None:
        if not self.stop:
            return None
        longest = max(len(s) for s in self.stop)
        start = max(0, self._released - longest)
        positions = [text.find(s, start) for s in self.stop]
        found = [p for p in positions if p >= 0]
        return min(found) if found else None

    def _stop_prefix_length(self, text: str) -> int:
        held = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:length]):
                    held = length
                    break
        return held
