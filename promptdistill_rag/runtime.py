"""Run a transformers causal LM through its own extension points, with token dropping.

Three extension points carry the whole method, so no model file is copied:

* A named attention backend (``promptdistill_sdpa`` / ``promptdistill_eager``)
  registered with ``AttentionInterface``. It sees every layer's final query and
  key states (after RoPE, QK-norm and fused projections) and delegates the
  attention itself to the fast kernel. While no call of ours is active it is a
  plain pass-through, and models only use it inside our calls anyway.
* Forward hooks on the decoder layers, which drop hidden states after a
  selection layer and hand the later layers the matching rotary embeddings.
* The ``DynamicCache`` object, whose per-layer key and value tensors are cut
  down to the kept entries.

Once tokens are dropped, a layer's cache entries no longer sit at positions
``0..L-1``, so the model's own mask (built from cache lengths) no longer fits.
``ForwardState`` tracks, per layer, whether its entries are still contiguous;
for the layers that are not, the attention backend builds the mask from the
entries' true positions instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

__all__ = [
    "ForwardState",
    "LayerObserver",
    "ModelRunner",
    "StopForward",
    "SUPPORTED_ATTENTION",
]

# Attention implementations the runner can wrap. Flash-attention packages treat
# non-contiguous position ids as packed sequences, so they are not wrapped;
# PyTorch's SDPA still dispatches to its own flash kernel whenever no mask is
# needed, which covers every full-attention layer here.
SUPPORTED_ATTENTION = ("sdpa", "eager")

_ACTIVE_STATE: contextvars.ContextVar[ForwardState | None] = contextvars.ContextVar(
    "promptdistill_active_state", default=None
)
_EAGER_FUNCTIONS: dict[type, Callable] = {}


class StopForward(Exception):
    """Raised inside a forward pass to end it early (GemFilter stops after its selection layer)."""


def _eager_function(module: torch.nn.Module) -> Callable:
    # Every transformers model file defines its own eager_attention_forward
    # (Gemma 2 adds logit soft-capping there), so use the one next to the module.
    cls = type(module)
    if cls not in _EAGER_FUNCTIONS:
        model_module = sys.modules[cls.__module__]
        function = getattr(model_module, "eager_attention_forward", None)
        if function is None:
            msg = f"{cls.__module__} defines no eager_attention_forward, so eager attention cannot be wrapped"
            raise RuntimeError(msg)
        _EAGER_FUNCTIONS[cls] = function
    return _EAGER_FUNCTIONS[cls]


def _base_function(kind: str, module: torch.nn.Module) -> Callable:
    if kind == "eager":
        return _eager_function(module)
    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def _make_backend(kind: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        base = _base_function(kind, module)
        state = _ACTIVE_STATE.get()
        if state is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        return state.attend(module, query, key, value, attention_mask, base, kwargs)

    attention.__name__ = f"promptdistill_{kind}_attention"
    return attention


for _kind, _mask_function in (("sdpa", "sdpa"), ("eager", "eager")):
    AttentionInterface.register(f"promptdistill_{_kind}", _make_backend(_kind))
    AttentionMaskInterface.register(
        f"promptdistill_{_kind}", AttentionMaskInterface._global_mapping[_mask_function]
    )


class LayerObserver:
    """Method-specific callbacks around each layer's attention.

    Subclasses score tokens (PromptDistill, GemFilter) or compress the cache
    (SnapKV, H2O). The default does nothing.
    """

    def before_attention(
        self, state: ForwardState, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor
    ) -> None:
        """Run before the layer's attention with its final ``(1, heads, q, d)`` query and ``(1, kv_heads, k, d)`` key states."""

    def after_attention(
        self,
        state: ForwardState,
        layer: int,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        kwargs: dict[str, Any],
    ) -> None:
        """Run after the layer's attention, when its cache holds this forward's entries."""


@dataclass
class ForwardState:
    """What the attention backend needs to know about one call's cache and tokens.

    Attributes:
        cache: The call's KV cache.
        base_kind: ``"sdpa"`` or ``"eager"``, the kernel that computes attention.
        contiguous: Per layer, whether its cache entries sit at positions ``0..L-1``
            (then the model's own mask is right and is used unchanged).
        entry_positions: Per layer, the positions of its cached entries when they are
            not contiguous, shaped ``(1, L)`` or ``(kv_heads, L)`` when each head keeps
            different entries; None for contiguous layers.
        query_positions: ``(q,)`` positions of the tokens in the current forward as the
            layers after the latest selection see them.
        observer: Method callbacks.
    """

    cache: DynamicCache
    base_kind: str
    num_layers: int
    observer: LayerObserver = field(default_factory=LayerObserver)
    contiguous: list[bool] = field(default_factory=list)
    entry_positions: list[torch.Tensor | None] = field(default_factory=list)
    query_positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.contiguous:
            self.contiguous = [True] * self.num_layers
        if not self.entry_positions:
            self.entry_positions = [None] * self.num_layers

    def set_entries(self, layer: int, positions: torch.Tensor) -> None:
        """Record that ``layer``'s cache now holds entries at ``positions`` (``(1, L)`` or ``(kv_heads, L)``)."""
        self.contiguous[layer] = False
        self.entry_positions[layer] = positions

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        base: Callable,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        layer = module.layer_idx
        contiguous = self.contiguous[layer]
        key_positions = None
        if not contiguous:
            key_positions = self._key_positions(layer, key.shape[-2])
            attention_mask = self._mask(module, query, key_positions, kwargs.get("sliding_window"))
            # Position ids only matter to kernels that detect packed sequences
            # from them; the gathered ones have gaps and must not look packed.
            kwargs = {name: value for name, value in kwargs.items() if name != "position_ids"}
        self.observer.before_attention(self, layer, module, query, key)
        output = base(module, query, key, value, attention_mask, **kwargs)
        if key_positions is not None:
            stored = self.cache.layers[layer].keys.shape[-2]
            # Cache layers only ever keep a suffix of what they returned (the
            # sliding-window layer drops its oldest entries), so the positions do too.
            self.entry_positions[layer] = key_positions[..., key_positions.shape[-1] - stored :]
        self.observer.after_attention(self, layer, module, query, key, kwargs)
        return output

    def _key_positions(self, layer: int, key_length: int) -> torch.Tensor:
        stored = self.entry_positions[layer]
        queries = self.query_positions
        if stored is None:
            positions = queries.view(1, -1)
        else:
            queries = queries.to(stored.device).view(1, -1).expand(stored.shape[0], -1)
            positions = torch.cat([stored, queries], dim=-1)
        if positions.shape[-1] != key_length:
            msg = (
                f"layer {layer}: tracked {positions.shape[-1]} key positions but the cache returned "
                f"{key_length} keys; the cache was changed outside the engine"
            )
            raise RuntimeError(msg)
        return positions

    def _mask(
        self, module: torch.nn.Module, query: torch.Tensor, key_positions: torch.Tensor, sliding_window: int | None
    ) -> torch.Tensor | None:
        q_length = query.shape[-2]
        k_length = key_positions.shape[-1]
        fresh_causal = q_length == k_length and key_positions.shape[0] == 1
        if sliding_window is None and (q_length == 1 or fresh_causal) and self.base_kind == "sdpa":
            # A single decoding query sees every cached entry; a fresh prefill of
            # tokens kept in their original order is plain causal attention.
            # Either way SDPA needs no mask and can use its fastest kernel.
            return None
        query_positions = self.query_positions.to(key_positions.device).view(1, -1, 1)
        keys = key_positions.unsqueeze(1)  # (P, 1, L)
        allowed = keys <= query_positions
        if sliding_window is not None:
            allowed = allowed & (keys > query_positions - sliding_window)
        heads = query.shape[1]
        if allowed.shape[0] not in (1, heads):
            allowed = allowed.repeat_interleave(heads // allowed.shape[0], dim=0)
        allowed = allowed.unsqueeze(0)  # (1, P or heads, q, L)
        if self.base_kind == "eager":
            mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
            return mask.masked_fill_(~allowed.to(query.device), torch.finfo(query.dtype).min)
        return allowed.to(query.device)


@dataclass
class LayerHooks:
    """Decoder-layer hooks for one forward: forward hooks and kwargs-rewriting pre-hooks by layer index."""

    forward: dict[int, Callable] = field(default_factory=dict)
    pre_forward: dict[int, Callable] = field(default_factory=dict)


class ModelRunner:
    """Own a causal LM's forward passes: the attention backend, the hooks and one lock.

    All forward passes of one model go through ``run``, which holds a lock, so
    two threads that share an engine take turns at the model and neither sees
    the other's hooks or cache. Each call keeps its own cache and state.

    Args:
        model: A loaded transformers causal LM (``...ForCausalLM``).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.base_kind = model.config._attn_implementation
        if self.base_kind not in SUPPORTED_ATTENTION:
            msg = (
                f"attn_implementation={self.base_kind!r} is not supported; load the model with "
                f"attn_implementation set to one of {', '.join(SUPPORTED_ATTENTION)} "
                "(SDPA uses PyTorch's flash kernel on GPUs whenever no mask is needed)"
            )
            raise ValueError(msg)
        self.backend_name = f"promptdistill_{self.base_kind}"
        decoder = model.get_decoder()
        self.layers = list(decoder.layers)
        self.num_layers = len(self.layers)
        self._configs = self._attention_configs(model)
        self._lock = threading.RLock()

    @staticmethod
    def _attention_configs(model: PreTrainedModel) -> list[Any]:
        # The attention modules and the mask builders read the attention
        # implementation from their own config objects, which may be sub-configs.
        configs = {id(model.config): model.config}
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation_internal"):
                configs[id(config)] = config
        return list(configs.values())

    def new_cache(self) -> DynamicCache:
        """Return an empty cache of the kind ``model.generate`` would use."""
        return DynamicCache(config=self.model.config)

    @contextlib.contextmanager
    def activate(self, state: ForwardState, hooks: LayerHooks | None = None) -> Iterator[None]:
        """Route the model's attention through the engine for the duration of the block."""
        with self._lock:
            previous = [config._attn_implementation_internal for config in self._configs]
            handles = []
            token = _ACTIVE_STATE.set(state)
            try:
                for config in self._configs:
                    config._attn_implementation_internal = self.backend_name
                if hooks is not None:
                    for index, hook in hooks.pre_forward.items():
                        handles.append(self.layers[index].register_forward_pre_hook(hook, with_kwargs=True))
                    for index, hook in hooks.forward.items():
                        handles.append(self.layers[index].register_forward_hook(hook))
                yield
            finally:
                for handle in handles:
                    handle.remove()
                _ACTIVE_STATE.reset(token)
                for config, name in zip(self._configs, previous):
                    config._attn_implementation_internal = name

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        state: ForwardState,
        hooks: LayerHooks | None = None,
    ) -> torch.Tensor:
        """Run one forward pass and return the last position's logits as float32 ``(1, vocab)``."""
        with torch.inference_mode(), self.activate(state, hooks):
            output = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                cache=state.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return output.logits[:, -1, :].float()

    @property
    def input_device(self) -> torch.device:
        """Device of the input embeddings, where input ids must go."""
        return self.model.get_input_embeddings().weight.device
