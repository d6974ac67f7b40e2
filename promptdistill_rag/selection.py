"""Turn token scores into the kept token indices, on the device and without host round trips."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pool_scores", "select_top", "unit_scores"]


def pool_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Smooth ``(k,)`` scores with a centred average pool of odd width ``kernel``.

    Positions near the ends average over the values that exist (padding is not
    counted), so the first and last tokens are not penalised.

    Example:
        >>> pool_scores(torch.tensor([0.0, 3.0, 0.0]), 3).tolist()
        [1.5, 1.0, 1.5]
    """
    if kernel <= 1:
        return scores
    pooled = F.avg_pool1d(
        scores.view(1, 1, -1), kernel_size=kernel, stride=1, padding=kernel // 2, count_include_pad=False
    )
    return pooled.view(-1)


def unit_scores(scores: torch.Tensor, units: torch.Tensor, unit_count: int, reduction: str = "mean") -> torch.Tensor:
    """Return ``(k,)`` scores where every token carries its unit's score (mean or max of the unit's tokens).

    Args:
        scores: ``(k,)`` token scores.
        units: ``(k,)`` unit index of each token (sentence, chunk), in ``[0, unit_count)``.
        unit_count: Number of units in the whole prompt.
        reduction: ``"mean"`` or ``"max"``.
    """
    if reduction == "max":
        lowest = torch.full((unit_count,), float("-inf"), dtype=scores.dtype, device=scores.device)
        maxima = lowest.scatter_reduce(0, units, scores, reduce="amax")
        return maxima.index_select(0, units)
    sums = torch.zeros(unit_count, dtype=scores.dtype, device=scores.device).index_add_(0, units, scores)
    counts = torch.zeros(unit_count, dtype=scores.dtype, device=scores.device).index_add_(
        0, units, torch.ones_like(scores)
    )
    means = sums / counts.clamp_min(1)
    return means.index_select(0, units)


def select_top(
    scores: torch.Tensor,
    keep: int,
    protected: torch.Tensor,
    units: torch.Tensor | None = None,
    unit_count: int = 0,
    unit_reduction: str = "mean",
) -> torch.Tensor:
    """Return the sorted indices of the ``keep`` best tokens, protected ones first.

    With ``units``, whole units are ranked by their tokens' scores and taken
    best first; the unit at the budget's edge contributes its best tokens.
    This is one ``topk`` on a combined key (unit score, then token score), so
    it stays on the device and has a static output shape.

    Args:
        scores: ``(k,)`` token scores (higher is better).
        keep: Number of indices to return; at most ``k``.
        protected: ``(k,)`` bool, tokens that must be kept.
        units: Optional ``(k,)`` unit index of each token.
        unit_count: Number of units in the whole prompt (needed with ``units``).
        unit_reduction: ``"mean"`` or ``"max"`` of a unit's token scores.

    Returns:
        ``(keep,)`` int64 indices in ascending order.

    Example:
        >>> select_top(torch.tensor([0.1, 0.9, 0.5, 0.2]), 2, torch.tensor([False, False, False, True])).tolist()
        [1, 3]
    """
    scores = scores.float()
    if units is not None:
        means = unit_scores(scores, units, unit_count, unit_reduction)
        # A token's unit rank is the number of tokens whose unit mean is lower:
        # equal for all tokens of a unit and at least one apart between units.
        # Adding the token's own score, scaled into [0, 0.5], orders tokens
        # inside a unit without ever lifting them above a better unit.
        unit_rank = torch.searchsorted(torch.sort(means).values, means).to(torch.float64)
        low, high = scores.min(), scores.max()
        within = (scores - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny) * 0.5
        scores = unit_rank + within.to(torch.float64)
    ranked = scores.masked_fill(protected, float("inf"))
    indices = torch.topk(ranked, keep, sorted=False).indices
    return torch.sort(indices).values
