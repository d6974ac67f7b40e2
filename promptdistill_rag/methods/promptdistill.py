"""PromptDistill: select tokens at early layers, run the later layers on the kept tokens only."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import DistillConfig, resolve_keep, resolve_layer
from ..prompt import PreparedPrompt
from ..runtime import ForwardState, LayerHooks, LayerObserver
from ..selection import pool_scores, select_top
from ..selectors import make_selector
from .base import Method, PrefillResult, clamp_budget, protected_tokens

__all__ = ["DistillPlan", "PromptDistillMethod"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillPlan:
    """The stages that will run for one prompt: ``(layer, tokens kept)`` pairs, no-op stages removed."""

    stages: tuple[tuple[int, int], ...]
    protected_count: int


class _DistillObserver(LayerObserver):
    """Scores at each selection layer, then drops hidden states and cache entries.

    It tracks the current sequence: which original tokens it holds
    (``current_index``, which are also their positions), which of them are
    protected, their units and where the query rows are.
    """

    def __init__(
        self,
        method: PromptDistillMethod,
        plan: DistillPlan,
        state: ForwardState,
        protected: torch.Tensor,
        units: torch.Tensor | None,
        unit_count: int,
        query_rows: torch.Tensor | None,
    ) -> None:
        self.config = method.config
        self.selector = method.selector
        self.state = state
        self.stage_keep = dict(plan.stages)
        # Each layer scores for the next stage at or after it.
        self.stage_of_layer: dict[int, int] = {}
        previous = -1
        for layer, _ in plan.stages:
            first = previous + 1 if method.config.layer_scores == "cumulative" else layer
            for scoring_layer in range(first, layer + 1):
                self.stage_of_layer[scoring_layer] = layer
            previous = layer
        # A sum ranks like the mean, so the layer count is not needed.
        self.score_sum: torch.Tensor | None = None
        self.current_index = torch.arange(protected.shape[0], device=protected.device)
        self.protected = protected
        self.units = units
        self.unit_count = unit_count
        self.query_rows = query_rows
        self.pending: torch.Tensor | None = None

    def before_attention(self, state, layer, module, query, key) -> None:
        stage_layer = self.stage_of_layer.get(layer)
        if stage_layer is None:
            return
        scores = self.selector.score(
            query,
            key,
            query_rows=self.query_rows,
            scaling=module.scaling,
            softcap=getattr(module, "attn_logit_softcapping", None),
        )
        device = scores.device
        protected = self.protected.to(device)
        if self.config.layer_scores == "cumulative":
            # Normalised per layer so that no layer outweighs the others
            # through the scale of its logits or the mass of its sinks.
            scores = scores.masked_fill(protected, 0.0)
            scores = scores / scores.sum().clamp_min(torch.finfo(scores.dtype).tiny)
            if self.score_sum is not None:
                scores = scores + self.score_sum.to(device)
            self.score_sum = scores
        if layer != stage_layer:
            return
        self.score_sum = None
        keep = self.stage_keep[layer]
        if self.units is None:
            scores = pool_scores(scores, self.config.pooling_kernel)
            units = None
        else:
            units = self.units.to(device)
        self.pending = select_top(
            scores, keep, protected, units, self.unit_count, unit_reduction=self.config.unit_reduction
        )

    def selection_hook(self, layer: int):
        def hook(module, args, output):
            if self.pending is None:
                msg = f"selection layer {layer} finished without scoring; its attention did not run through the engine"
                raise RuntimeError(msg)
            keep, self.pending = self.pending, None
            hidden = output[0] if isinstance(output, tuple) else output
            keep = keep.to(hidden.device)
            reduced = hidden.index_select(1, keep)
            self._apply(keep, layer)
            if isinstance(output, tuple):
                return (reduced, *output[1:])
            return reduced

        return hook

    def _apply(self, keep: torch.Tensor, layer: int) -> None:
        index_device = self.current_index.device
        keep_here = keep.to(index_device)
        self.current_index = self.current_index.index_select(0, keep_here)
        self.protected = self.protected.index_select(0, keep_here)
        if self.units is not None:
            self.units = self.units.index_select(0, keep_here)
        if self.query_rows is not None:
            # Query rows are protected, so each survives; its new row is its rank among the kept.
            self.query_rows = torch.searchsorted(keep_here, self.query_rows.to(index_device))
        self.state.query_positions = self.current_index
        if self.config.truncate_cache:
            for earlier in range(layer + 1):
                cache_layer = self.state.cache.layers[earlier]
                # Sliding-window layers keep only their window, already bounded.
                if getattr(cache_layer, "is_sliding", False) or not cache_layer.is_initialized:
                    continue
                kept = keep.to(cache_layer.keys.device)
                cache_layer.keys = cache_layer.keys.index_select(-2, kept)
                cache_layer.values = cache_layer.values.index_select(-2, kept)
                self.state.set_entries(earlier, self.current_index.view(1, -1).to(cache_layer.keys.device))

    def position_hook(self, module, args, kwargs):
        index = self.current_index
        embeddings = kwargs.get("position_embeddings")
        if embeddings is None:
            msg = (
                f"{type(module).__name__} received no position_embeddings; this architecture computes "
                "rotary embeddings elsewhere and is not supported"
            )
            raise RuntimeError(msg)
        kwargs["position_embeddings"] = tuple(part.index_select(1, index.to(part.device)) for part in embeddings)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = index.view(1, -1).to(kwargs["position_ids"].device)
        kwargs["attention_mask"] = None
        return args, kwargs


class PromptDistillMethod(Method):
    """PromptDistill (Zadeh et al., 2025, https://arxiv.org/abs/2503.23274).

    Every layer up to and including a selection layer runs on the whole
    prompt. That layer's attention scores the tokens, the best ``keep`` stay in
    their original order and at their original positions, and the following
    layers run on them alone. With ``truncate_cache`` the earlier layers' KV
    caches are cut to the same tokens, so decoding reads ``keep`` entries in
    every full-attention layer.

    Limitations:
        Sliding-window cache layers (Gemma 2 and 3, Mistral with a window) keep
        their window and are not truncated. Scores on a sliding-window layer
        use every earlier token, not only those in the window.
    """

    name = "promptdistill"

    def __init__(self, config: DistillConfig, runner) -> None:
        super().__init__(config, runner)
        self.layers = [resolve_layer(layer, runner.num_layers, "selection_layers") for layer in config.selection_layers]
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            msg = (
                f"selection_layers must be strictly ascending, got {list(config.selection_layers)} "
                f"which resolves to layers {self.layers}"
            )
            raise ValueError(msg)
        self.selector = make_selector(config.selector, signal=config.signal, head_reduction=config.head_reduction)

    def plan(self, prepared: PreparedPrompt) -> DistillPlan:
        """Resolve the stages for this prompt and check the budget against the protected tokens."""
        length = len(prepared)
        protected = sum(protected_tokens(prepared, sink=self.config.sink_tokens, suffix=self.config.protected_suffix))
        stages = []
        current = length
        for layer, spec in zip(self.layers, self.config.keep_per_stage()):
            keep = resolve_keep(spec, length, self.config.min_keep)
            if keep >= current:
                if current < length:
                    logger.warning(
                        "keep=%s at layer %d is not below the %d tokens the previous stage kept; "
                        "that stage keeps them all",
                        spec,
                        layer,
                        current,
                    )
                continue
            what = (
                f"the query, {self.config.sink_tokens} sink tokens and {self.config.protected_suffix} "
                "suffix tokens"
            )
            keep = clamp_budget(spec, keep, protected, length, what)
            if keep >= current:
                continue
            stages.append((layer, keep))
            current = keep
        return DistillPlan(stages=tuple(stages), protected_count=protected)

    def check(self, prepared: PreparedPrompt) -> None:
        self.plan(prepared)

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        plan = self.plan(prepared)
        length = len(prepared)
        if not plan.stages:
            return self.unchanged_prefill(input_ids)

        device = input_ids.device
        state = self.new_state()
        protected = torch.tensor(
            protected_tokens(prepared, sink=self.config.sink_tokens, suffix=self.config.protected_suffix),
            device=device,
        )
        units, unit_count = self._units(prepared, device)
        use_query = self.selector.uses_query and prepared.query_span is not None
        query_rows = torch.arange(*prepared.query_span, device=device) if use_query else None
        observer = _DistillObserver(self, plan, state, protected, units, unit_count, query_rows)
        state.observer = observer

        first_layer = plan.stages[0][0]
        for layer in range(first_layer + 1, self.runner.num_layers):
            state.contiguous[layer] = False
        hooks = LayerHooks(
            forward={layer: observer.selection_hook(layer) for layer, _ in plan.stages},
            pre_forward={layer: observer.position_hook for layer in range(first_layer + 1, self.runner.num_layers)},
        )
        positions = torch.arange(length, device=device).view(1, -1)
        state.query_positions = positions.view(-1)
        logits = self.runner.forward(input_ids, positions, state, hooks)
        state.observer = LayerObserver()
        return PrefillResult(
            logits=logits,
            state=state,
            next_position=length,
            kept_tokens=[keep for _, keep in plan.stages],
            kept_indices=observer.current_index.tolist(),
            selection_layers=[layer for layer, _ in plan.stages],
            query_source="query" if use_query else "last_token",
        )

    def _units(self, prepared: PreparedPrompt, device: torch.device) -> tuple[torch.Tensor | None, int]:
        granularity = self.config.granularity
        if granularity == "token":
            return None, 0
        ids = prepared.sentence_ids() if granularity == "sentence" else prepared.chunk_ids()
        return torch.tensor(ids, device=device), max(ids) + 1
