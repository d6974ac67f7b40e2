"""The scoring interface that every token selector implements, and the shared attention math."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

__all__ = ["TokenSelector", "attention_scores"]

Signal = Literal["softmax", "logits"]
HeadReduction = Literal["mean", "max"]


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    *,
    scaling: float,
    softcap: float | None = None,
    signal: Signal = "softmax",
    head_reduction: HeadReduction = "mean",
) -> torch.Tensor:
    """Score every key position by the attention that some query rows pay it.

    The rows attend causally: row ``i`` (a sequence index) sees keys ``0..i``.
    Each key's score is the mean over the rows that can see it, so keys after
    an early row are scored by the later rows alone.

    Args:
        query: ``(1, heads, q, head_dim)`` query states after RoPE.
        key: ``(1, kv_heads, k, head_dim)`` key states; ``heads`` must be a multiple of
            ``kv_heads`` (grouped-query attention shares each key head).
        rows: ``(r,)`` sequence indices of the scoring rows, each in ``[0, q)``; the
            query and key sequences are the same tokens here, so ``q == k``.
        scaling: The layer's softmax scale.
        softcap: Gemma 2's attention logit soft-cap, if the layer has one.
        signal: ``"softmax"`` uses attention probabilities; ``"logits"`` uses the raw
            scaled products.
        head_reduction: ``"mean"`` or ``"max"`` over query heads.

    Returns:
        ``(k,)`` float32 scores on the key's device.
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    groups = heads // kv_heads
    row_count = rows.shape[0]
    key_length = key.shape[-2]
    selected = query[0].index_select(1, rows.to(query.device))  # (heads, r, d)
    # (kv_heads, groups * r, d) @ (kv_heads, d, k): each key head serves its
    # group of query heads without materialising repeated keys.
    grouped = selected.reshape(kv_heads, groups * row_count, -1)
    logits = torch.matmul(grouped, key[0].transpose(-1, -2)).float() * scaling
    logits = logits.view(heads, row_count, key_length)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    visible = torch.arange(key_length, device=logits.device).view(1, -1) <= rows.to(logits.device).view(-1, 1)
    if signal == "softmax":
        values = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    else:
        values = logits.masked_fill(~visible, 0.0)
    if head_reduction == "max":
        per_row = values.amax(dim=0)
    else:
        per_row = values.mean(dim=0)
    per_row = per_row.masked_fill(~visible, 0.0)
    counts = visible.sum(dim=0).clamp_min(1)
    return per_row.sum(dim=0) / counts


class TokenSelector(ABC):
    """Score the tokens of the current sequence at a selection layer.

    Subclasses choose which query rows speak for the user's request; the
    attention math is shared (``attention_scores``).

    Args:
        signal: ``"softmax"`` or ``"logits"`` (see ``attention_scores``).
        head_reduction: ``"mean"`` or ``"max"`` over query heads.
    """

    #: Whether the selector needs the caller's query span.
    uses_query: bool = False

    def __init__(self, signal: Signal = "softmax", head_reduction: HeadReduction = "mean") -> None:
        self.signal = signal
        self.head_reduction = head_reduction

    @abstractmethod
    def rows(self, sequence_length: int, query_rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Return the ``(r,)`` sequence indices whose attention scores the tokens."""

    def score(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        *,
        query_rows: torch.Tensor | None,
        scaling: float,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Return ``(k,)`` float32 scores for every token of the current sequence.

        Args:
            query: ``(1, heads, k, head_dim)`` query states of the selection layer.
            key: ``(1, kv_heads, k, head_dim)`` key states of the same tokens.
            query_rows: ``(r,)`` sequence indices of the user's query tokens, or None.
            scaling: The layer's softmax scale.
            softcap: The layer's attention logit soft-cap, if any.
        """
        rows = self.rows(key.shape[-2], query_rows, query.device)
        return attention_scores(
            query,
            key,
            rows,
            scaling=scaling,
            softcap=softcap,
            signal=self.signal,
            head_reduction=self.head_reduction,
        )
