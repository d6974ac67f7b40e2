"""The paper's rule: the last prompt token's attention scores the context."""

from __future__ import annotations

import torch

from .base import TokenSelector

__all__ = ["LastTokenSelector"]


class LastTokenSelector(TokenSelector):
    """Score tokens by the attention of the last prompt token.

    This is the rule of PromptDistill and GemFilter. It needs no knowledge of
    where the question is, but in a chat prompt the last token belongs to the
    template (the assistant header), not to the question.

    Example:
        >>> selector = LastTokenSelector(signal="logits")
        >>> selector.rows(10, None, torch.device("cpu")).tolist()
        [9]
    """

    def rows(self, sequence_length: int, query_rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return torch.tensor([sequence_length - 1], device=device)
