"""Score the context with the attention of the user's query tokens."""

from __future__ import annotations

import torch

from .base import TokenSelector

__all__ = ["QuerySelector"]


class QuerySelector(TokenSelector):
    """Score tokens by the attention of the query's tokens plus the last prompt token.

    The query's own tokens carry the question's meaning, which the last token
    of a chat template does not. The last token joins them so that context
    placed after the question (as in "Question: ... Context: ...") is scored
    too, because causal attention hides it from the query's tokens. Without a
    query span this is the last-token rule.

    Example:
        >>> QuerySelector().rows(10, torch.tensor([4, 5]), torch.device("cpu")).tolist()
        [4, 5, 9]
    """

    uses_query = True

    def rows(self, sequence_length: int, query_rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        last = torch.tensor([sequence_length - 1], device=device)
        if query_rows is None or query_rows.numel() == 0:
            return last
        return torch.unique(torch.cat([query_rows.to(device), last]))
