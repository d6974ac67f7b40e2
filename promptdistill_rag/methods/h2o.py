"""H2O: a fixed KV budget of heavy-hitter and recent entries, kept during prefill and decoding."""

from __future__ import annotations

import torch

from ..config import H2OConfig, resolve_keep
from ..prompt import PreparedPrompt
from ..runtime import LayerObserver
from .base import Method, PrefillResult
from .kv_compression import gather_entries, kv_head_attention, stored_length

__all__ = ["H2OMethod"]

# Query rows per block when summing the prompt's attention, so that the
# (heads, block, n) probabilities stay small for long prompts.
_QUERY_BLOCK = 256


class _HeavyHitters(LayerObserver):
    """Keeps each layer's cumulative attention per KV head and evicts down to the budget."""

    def __init__(self, keep: int, recent: int, num_layers: int) -> None:
        self.keep = keep
        self.recent = recent
        self.scores: list[torch.Tensor | None] = [None] * num_layers

    def after_attention(self, state, layer, module, query, key, kwargs) -> None:
        q_length, k_length = query.shape[-2], key.shape[-2]
        softcap = getattr(module, "attn_logit_softcapping", None)
        stored = stored_length(state, layer)
        if q_length == k_length:
            # Prefill: every prompt token's attention, in blocks of rows.
            positions = torch.arange(k_length, device=key.device)
            totals = torch.zeros(key.shape[1], k_length, device=key.device)
            for start in range(0, q_length, _QUERY_BLOCK):
                end = min(q_length, start + _QUERY_BLOCK)
                block = kv_head_attention(
                    query[:, :, start:end, :],
                    key,
                    positions[start:end],
                    positions.view(1, -1),
                    scaling=module.scaling,
                    softcap=softcap,
                )
                totals += block.sum(dim=1)
            entry_positions = positions.view(1, -1).expand(key.shape[1], -1)
        else:
            # Decoding: one new query; every key it sees is earlier, so no mask.
            key_positions = state.entry_positions[layer]
            probabilities = kv_head_attention(
                query,
                key,
                state.query_positions,
                torch.zeros(1, k_length, device=key.device, dtype=torch.long),
                scaling=module.scaling,
                softcap=softcap,
            )
            previous = self.scores[layer]
            totals = torch.cat([previous, previous.new_zeros(previous.shape[0], 1)], dim=-1)
            totals = totals[:, totals.shape[-1] - k_length :] + probabilities[:, 0, :]
            entry_positions = key_positions.expand(key.shape[1], -1) if key_positions is not None else None
        # The cache may hold only a suffix of what this forward saw.
        totals = totals[:, k_length - stored :]
        if entry_positions is not None:
            entry_positions = entry_positions[:, entry_positions.shape[-1] - stored :]
        if stored <= self.keep:
            self.scores[layer] = totals
            if entry_positions is not None and q_length == k_length:
                state.set_entries(layer, entry_positions)
            return
        heavy = self.keep - self.recent
        heads = totals.shape[0]
        recent_index = torch.arange(stored - self.recent, stored, device=key.device).view(1, -1).expand(heads, -1)
        if heavy > 0:
            top = torch.topk(totals[:, : stored - self.recent], heavy, dim=-1, sorted=False).indices
            index = torch.cat([torch.sort(top, dim=-1).values, recent_index], dim=-1)
        else:
            index = recent_index
        self.scores[layer] = torch.gather(totals, 1, index)
        gather_entries(state, layer, index, torch.gather(entry_positions, 1, index))


class H2OMethod(Method):
    """H2O, heavy-hitter oracle (Zhang et al., 2023, https://arxiv.org/abs/2306.14048).

    The prompt runs through every layer in full. Each layer then keeps, per KV
    head, the ``recent`` latest entries plus the entries with the largest
    attention summed over all prompt tokens (query heads that share a KV head
    add their attention). Every decoding step adds its attention to those sums
    and evicts the weakest non-recent entry, so between steps no layer holds
    more than ``keep`` entries. New tokens keep their true positions.

    A budget that holds the whole prompt turns H2O off for the call, so that it
    equals the full model; below the prompt length the budget holds through
    decoding too.

    Limitations:
        Prefill costs the full model plus one extra pass over the attention
        matrix per layer, in blocks, to sum the attention of every prompt token.
    """

    name = "h2o"

    def _budget(self, prepared: PreparedPrompt) -> tuple[int, int]:
        keep = resolve_keep(self.config.keep, len(prepared), self.config.min_keep)
        recent = max(1, min(keep, round(keep * self.config.recent_fraction)))
        return keep, recent

    def check(self, prepared: PreparedPrompt) -> None:
        self._budget(prepared)

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        keep, recent = self._budget(prepared)
        length = len(prepared)
        if keep >= length:
            return self.unchanged_prefill(input_ids)
        state = self.new_state()
        observer = _HeavyHitters(keep, recent, self.runner.num_layers)
        state.observer = observer
        result = self.full_prefill(input_ids, state)
        # The observer stays on, so decoding keeps evicting.
        result.kept_tokens = [keep]
        return result
