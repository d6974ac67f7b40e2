"""SnapKV: full prefill, then keep per head the KV entries the prompt's last tokens attend to."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SnapKVConfig, resolve_keep
from ..prompt import PreparedPrompt
from ..runtime import LayerObserver
from .base import Method, PrefillResult, clamp_budget
from .kv_compression import gather_entries, kv_head_attention, stored_length

__all__ = ["SnapKVMethod"]


class _Compress(LayerObserver):
    def __init__(self, keep: int, window: int, kernel: int) -> None:
        self.keep = keep
        self.window = window
        self.kernel = kernel

    def after_attention(self, state, layer, module, query, key, kwargs) -> None:
        length = key.shape[-2]
        stored = stored_length(state, layer)
        if stored <= self.keep:
            return
        window = self.window
        device = key.device
        positions = torch.arange(length, device=device)
        probabilities = kv_head_attention(
            query[:, :, length - window :, :],
            key,
            positions[length - window :],
            positions.view(1, -1),
            scaling=module.scaling,
            softcap=getattr(module, "attn_logit_softcapping", None),
        )
        scores = probabilities.sum(dim=1)  # (kv_heads, length)
        # Only the stored suffix can be kept (sliding-window layers store less
        # than they saw); the window itself is always kept.
        first = length - stored
        candidates = scores[:, first : length - window]
        if self.kernel > 1:
            candidates = F.avg_pool1d(
                candidates.unsqueeze(1),
                kernel_size=self.kernel,
                stride=1,
                padding=self.kernel // 2,
                count_include_pad=False,
            ).squeeze(1)
        top = torch.topk(candidates, self.keep - window, dim=-1, sorted=False).indices
        top = torch.sort(top, dim=-1).values
        heads = scores.shape[0]
        window_index = torch.arange(stored - window, stored, device=device).view(1, -1).expand(heads, -1)
        index = torch.cat([top, window_index], dim=-1)
        gather_entries(state, layer, index, index + first)


class SnapKVMethod(Method):
    """SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469).

    The prompt runs through every layer in full. Afterwards, in each layer,
    the softmax attention of the last ``window`` prompt tokens (summed over
    the window) scores the earlier entries for each KV head. Query heads that
    share a KV head (grouped-query attention) add their scores, so the cache
    keeps ``num_key_value_heads`` heads, each with its own ``keep - window``
    best entries (average-pooled scores) plus the window.

    Limitations:
        Prefill costs as much as the full model; only decoding reads less.
        Sliding-window layers that store no more than ``keep`` entries are left as they are.
    """

    name = "snapkv"

    def _budget(self, prepared: PreparedPrompt) -> tuple[int, int]:
        length = len(prepared)
        keep = resolve_keep(self.config.keep, length, self.config.min_keep)
        window = min(self.config.window, length)
        keep = clamp_budget(self.config.keep, keep, window, length, f"SnapKV's observation window of {window}")
        return keep, window

    def check(self, prepared: PreparedPrompt) -> None:
        self._budget(prepared)

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        keep, window = self._budget(prepared)
        length = len(prepared)
        if keep >= length:
            return self.unchanged_prefill(input_ids)
        state = self.new_state()
        state.observer = _Compress(keep, window, self.config.pooling_kernel)
        result = self.full_prefill(input_ids, state)
        state.observer = LayerObserver()
        result.kept_tokens = [keep]
        return result
