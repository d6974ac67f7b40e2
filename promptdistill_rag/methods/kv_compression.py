"""Shared pieces of the KV-cache compression methods (SnapKV, H2O): per-head scores and gathers."""

from __future__ import annotations

import torch

from ..runtime import ForwardState

__all__ = ["gather_entries", "kv_head_attention", "stored_length"]


def kv_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    *,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Return softmax attention probabilities summed over each KV head's query heads.

    Args:
        query: ``(1, heads, q, d)`` query states.
        key: ``(1, kv_heads, k, d)`` key states.
        query_positions: ``(q,)`` positions of the queries.
        key_positions: ``(1, k)`` or ``(kv_heads, k)`` positions of the keys; a key is
            visible to a query at the same or a later position.
        scaling: Softmax scale.
        softcap: Attention logit soft-cap (Gemma 2), if any.

    Returns:
        ``(kv_heads, q, k)`` float32 probabilities, summed over the query heads
        that share each KV head.
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    groups = heads // kv_heads
    q_length, k_length = query.shape[-2], key.shape[-2]
    grouped = query[0].reshape(kv_heads, groups * q_length, -1)
    logits = torch.matmul(grouped, key[0].transpose(-1, -2)).float() * scaling
    logits = logits.view(kv_heads, groups, q_length, k_length)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    visible = key_positions.to(logits.device).view(-1, 1, 1, k_length) <= query_positions.to(logits.device).view(
        1, 1, -1, 1
    )
    probabilities = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    return probabilities.sum(dim=1)


def stored_length(state: ForwardState, layer: int) -> int:
    """Return how many entries the layer's cache holds."""
    return state.cache.layers[layer].keys.shape[-2]


def gather_entries(state: ForwardState, layer: int, index: torch.Tensor, positions: torch.Tensor) -> None:
    """Keep, per KV head, the cache entries at ``index`` and record their positions.

    Args:
        state: The call's forward state.
        layer: Layer whose cache to cut.
        index: ``(kv_heads, kept)`` entry indices into the layer's stored entries, ascending per head.
        positions: ``(kv_heads, kept)`` positions of those entries.
    """
    cache_layer = state.cache.layers[layer]
    keys, values = cache_layer.keys, cache_layer.values
    base = index.to(keys.device).view(1, index.shape[0], index.shape[1], 1)
    cache_layer.keys = torch.gather(keys, 2, base.expand(-1, -1, -1, keys.shape[-1]))
    cache_layer.values = torch.gather(values, 2, base.expand(-1, -1, -1, values.shape[-1]))
    state.set_entries(layer, positions.to(keys.device))
