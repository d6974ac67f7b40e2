"""GemFilter: select tokens at an early layer, then rerun the whole model on them."""

from __future__ import annotations

import torch

from ..config import GemFilterConfig, resolve_keep, resolve_layer
from ..prompt import PreparedPrompt
from ..runtime import LayerObserver, StopForward
from ..selection import pool_scores, select_top
from ..selectors import LastTokenSelector
from .base import Method, PrefillResult, clamp_budget, protected_tokens

__all__ = ["GemFilterMethod"]


class _ScoreAndStop(LayerObserver):
    def __init__(self, method: GemFilterMethod, keep: int, protected: torch.Tensor) -> None:
        self.layer = method.layer
        self.keep = keep
        self.protected = protected
        self.kernel = method.config.pooling_kernel
        # The authors sum attention logits over heads; the mean ranks identically.
        self.selector = LastTokenSelector(signal="logits", head_reduction="mean")
        self.selected: torch.Tensor | None = None

    def before_attention(self, state, layer, module, query, key) -> None:
        if layer != self.layer:
            return
        scores = self.selector.score(
            query,
            key,
            query_rows=None,
            scaling=module.scaling,
            softcap=getattr(module, "attn_logit_softcapping", None),
        )
        scores = pool_scores(scores, self.kernel)
        self.selected = select_top(scores, self.keep, self.protected.to(scores.device))
        # The layers after the selection layer would only be thrown away.
        raise StopForward


class GemFilterMethod(Method):
    """GemFilter (Shi et al., 2024, https://arxiv.org/abs/2409.17422).

    A first pass runs the layers up to ``selection_layer`` on the whole prompt
    and stops there; the last token's attention logits (averaged over heads,
    average-pooled) pick ``keep`` tokens; a second pass runs the whole model
    from the first layer on those tokens at fresh positions ``0..keep-1``, and
    decoding continues from position ``keep``.

    The last token and the caller's query are always kept.
    """

    name = "gemfilter"

    def __init__(self, config: GemFilterConfig, runner) -> None:
        super().__init__(config, runner)
        self.layer = resolve_layer(config.selection_layer, runner.num_layers, "selection_layer")

    def _budget(self, prepared: PreparedPrompt) -> tuple[int, list[bool]]:
        length = len(prepared)
        protected = protected_tokens(prepared, sink=0, suffix=1)
        keep = resolve_keep(self.config.keep, length, self.config.min_keep)
        keep = clamp_budget(self.config.keep, keep, sum(protected), length, "the query and the last token")
        return keep, protected

    def check(self, prepared: PreparedPrompt) -> None:
        self._budget(prepared)

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        keep, protected = self._budget(prepared)
        length = len(prepared)
        if keep >= length:
            return self.unchanged_prefill(input_ids)

        device = input_ids.device
        observer = _ScoreAndStop(self, keep, torch.tensor(protected, device=device))
        scout = self.new_state()
        scout.observer = observer
        positions = torch.arange(length, device=device).view(1, -1)
        try:
            self.runner.forward(input_ids, positions, scout)
        except StopForward:
            pass
        if observer.selected is None:
            msg = f"GemFilter's first pass ended without reaching selection layer {self.layer}"
            raise RuntimeError(msg)
        selected = observer.selected.to(device)
        result = self.full_prefill(input_ids.index_select(1, selected))
        result.kept_tokens = [keep]
        result.kept_indices = selected.tolist()
        result.selection_layers = [self.layer]
        result.query_source = "last_token"
        return result
