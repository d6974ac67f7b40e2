"""Helpers for tests, notebooks and benchmarks: tiny random-weight models and the shared default engine.

Nothing here downloads anything. The tiny models are built from configs in
memory, with the vocabulary of the default model's tokenizer so that they can
share it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

__all__ = ["TINY_ARCHITECTURES", "default_engine", "default_tokenizer", "tiny_engine", "tiny_model"]

# Small enough to run a forward pass in milliseconds; several layers so that
# selection has layers before and after it; sliding windows short enough that
# a 40-token prompt crosses them.
_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}

TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": 12},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {},
    "phi3": {"sliding_window": None, "pad_token_id": 0},
    "gemma2": {
        "sliding_window": 12,
        "layer_types": ["sliding_attention", "full_attention"] * 3,
        "query_pre_attn_scalar": 16,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "hidden_activation": "gelu_pytorch_tanh",
    },
    "gemma3_text": {
        "sliding_window": 12,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
        "query_pre_attn_scalar": 16,
        "hidden_activation": "gelu_pytorch_tanh",
    },
}
"""Config overrides of the tiny test model of each supported architecture (``config.model_type``)."""


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """Return the default model's tokenizer (converted on first use, then cached in memory)."""
    from transformers import AutoTokenizer

    from .default_model import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)


def tiny_model(model_type: str, *, seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any) -> PreTrainedModel:
    """Build a tiny random-weight causal LM of ``model_type`` with the default tokenizer's vocabulary.

    Args:
        model_type: A key of ``TINY_ARCHITECTURES``.
        seed: Seed of the weight initialisation.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (Gemma 2 always uses eager,
            because SDPA has no logit soft-capping).
        **overrides: Config fields that replace the defaults.

    Example:
        >>> model = tiny_model("qwen3", num_hidden_layers=4)
        >>> model.config.num_hidden_layers
        4
    """
    if model_type not in TINY_ARCHITECTURES:
        msg = f"no tiny config for {model_type!r}; choose one of {', '.join(TINY_ARCHITECTURES)}"
        raise ValueError(msg)
    tokenizer = default_tokenizer()
    values = {**_COMMON, **TINY_ARCHITECTURES[model_type], **overrides}
    values.setdefault("vocab_size", len(tokenizer))
    values.setdefault("bos_token_id", tokenizer.bos_token_id)
    values.setdefault("eos_token_id", tokenizer.eos_token_id)
    if model_type == "gemma2":
        attn_implementation = "eager"
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


def tiny_engine(model_type: str = "llama", config: Any = None, **overrides: Any):
    """Return a ``PromptDistillEngine`` around ``tiny_model(model_type)`` and the default tokenizer."""
    from .engine import PromptDistillEngine

    return PromptDistillEngine(tiny_model(model_type, **overrides), default_tokenizer(), config=config)


@functools.lru_cache(maxsize=1)
def default_engine():
    """Return one shared engine with the real default model, loaded once per process."""
    from .engine import PromptDistillEngine

    return PromptDistillEngine.from_default()
