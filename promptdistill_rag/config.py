"""Validated, immutable settings for every prompt-compression method.

Each method has one config class. All of them share the budget parameter
``keep``: the number of prompt tokens (or KV entries per layer) that survive,
given as an absolute count or as a fraction of the prompt. Values that depend
on the model (layer indices) are checked again when an engine receives the
config, because only then is the model's depth known.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

__all__ = [
    "DistillConfig",
    "FullConfig",
    "GemFilterConfig",
    "H2OConfig",
    "MethodConfig",
    "SnapKVConfig",
    "TruncateConfig",
    "METHOD_NAMES",
    "config_for_method",
    "parse_config",
    "resolve_keep",
    "resolve_layer",
]

LayerSpec = Union[int, float]
"""A layer index (negative counts from the last layer) or a fraction of the depth in ``(0, 1)``."""

KeepSpec = Union[int, float]
"""A token count (at least 1) or a fraction of the prompt in ``(0, 1]``."""


def _check_keep(value: KeepSpec, field: str) -> KeepSpec:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{field} must be an int token count or a float fraction, got {value!r} ({type(value).__name__})"
        raise ValueError(msg)
    if isinstance(value, int):
        if value < 1:
            msg = f"{field} must be at least 1 token when given as an int, got {value}"
            raise ValueError(msg)
        return value
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        msg = f"{field} must be a fraction in (0, 1] when given as a float, got {value}"
        raise ValueError(msg)
    return value


def _check_layer(value: LayerSpec, field: str) -> LayerSpec:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{field} must be an int layer index or a float fraction of the depth, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, float) and (not math.isfinite(value) or not 0.0 < value < 1.0):
        msg = f"{field} must be a fraction in (0, 1) when given as a float, got {value}"
        raise ValueError(msg)
    return value


def _check_pooling_kernel(value: int) -> int:
    if value < 1 or value % 2 == 0:
        msg = f"pooling_kernel must be a positive odd int so that the pooled scores stay centred, got {value}"
        raise ValueError(msg)
    return value


def resolve_layer(value: LayerSpec, num_layers: int, field: str = "selection_layers") -> int:
    """Turn a layer spec into a layer index in ``[0, num_layers - 1]``.

    Args:
        value: An int index (``-1`` is the last layer) or a float fraction of the depth,
            which maps to ``round(value * num_layers)``.
        num_layers: The model's number of decoder layers.
        field: The config field name used in error messages.

    Raises:
        ValueError: If the index falls outside the model's layers.

    Example:
        >>> resolve_layer(0.5, 30), resolve_layer(-1, 30)
        (15, 29)
    """
    if isinstance(value, float):
        index = min(num_layers - 1, max(0, round(value * num_layers)))
    else:
        index = value + num_layers if value < 0 else value
    if not 0 <= index < num_layers:
        msg = (
            f"{field} value {value!r} is outside the model's layers: the model has {num_layers} "
            f"decoder layers, so valid indices are 0..{num_layers - 1} (or -{num_layers}..-1)"
        )
        raise ValueError(msg)
    return index


def resolve_keep(value: KeepSpec, prompt_tokens: int, min_keep: int = 1) -> int:
    """Turn a keep spec into a token count for a prompt of ``prompt_tokens`` tokens.

    Fractions round up and never resolve below ``min_keep``, so that a budget
    meant for long prompts leaves short ones whole. An int is taken as given.
    The result may exceed the prompt length, which means "drop nothing".

    Example:
        >>> resolve_keep(0.25, 1000), resolve_keep(300, 1000), resolve_keep(0.25, 40, min_keep=128)
        (250, 300, 128)
    """
    if isinstance(value, float):
        return max(min_keep, math.ceil(value * prompt_tokens))
    return value


class _BaseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FullConfig(_BaseConfig):
    """The unmodified model: full prefill, full KV cache.

    It is the reference for every comparison and equivalence test.

    Example:
        >>> FullConfig().method
        'full'
    """

    method: Literal["full"] = "full"


class DistillConfig(_BaseConfig):
    """Settings of PromptDistill (Zadeh et al., 2025, https://arxiv.org/abs/2503.23274).

    The model runs every layer up to and including ``selection_layers[0]`` on the
    whole prompt. That layer's attention scores the prompt's tokens, the top
    ``keep[0]`` tokens survive (in their original order and at their original
    positions), and the following layers run on those tokens only. Each further
    entry of ``selection_layers`` repeats the step on the surviving tokens.

    Attributes:
        selection_layers: Layers whose attention selects tokens, in ascending order.
            An int is a layer index (negative counts from the last layer); a float
            in ``(0, 1)`` is a fraction of the depth, rounded to the nearest layer.
        keep: Prompt tokens kept after each stage, including the protected ones
            (the query, the first ``sink_tokens`` and the last ``protected_suffix``
            tokens). An int is a count; a float in ``(0, 1]`` is a fraction of the
            whole prompt. One value applies to every stage. A count at least the
            prompt length drops nothing.
        pooling_kernel: Width of the average pool that smooths token scores along
            the sequence (odd; 1 turns smoothing off).
        truncate_cache: After a stage, also cut the KV cache of the layers that ran
            before it down to the kept tokens, so decoding reads fewer entries.
        selector: ``"query"`` scores with the attention of the user's query tokens
            (plus the last prompt token) when the caller passes ``query``; without
            a query it falls back to ``"last_token"`` and the result's stats say so.
            ``"last_token"`` is the paper's rule: the last prompt token's attention.
        signal: ``"softmax"`` averages attention probabilities; ``"logits"`` averages
            the raw scaled query-key products, as the paper does.
        head_reduction: How the scores of the attention heads are combined.
        layer_scores: ``"selection"`` scores with the selection layer alone, as the
            paper does; ``"cumulative"`` averages the scores of every layer since the
            previous stage (or the first layer), each normalised to sum to 1 over
            the unprotected tokens. Single layers of small models attend erratically;
            the average is steadier.
        granularity: ``"token"`` ranks single tokens; ``"sentence"`` and ``"chunk"``
            rank whole sentences or whole chunks (the ``chunks`` passed to
            ``generate``; sentences where there are none) by their tokens'
            scores and keep the best units whole, so that the model reads
            complete text.
        unit_reduction: How a sentence's or chunk's token scores combine into the
            unit's score: ``"max"`` lets one strongly attended token carry its
            unit; ``"mean"`` favours units that are relevant throughout.
        sink_tokens: Tokens at the start of the prompt that are always kept.
        protected_suffix: Tokens at the end of the prompt that are always kept
            (the chat template's assistant header and the last token).
        min_keep: The fewest tokens a fractional ``keep`` resolves to, so that short
            prompts (a chat turn, a question without context) run whole. The
            default 256 leaves prompts up to about 1,000 tokens at a quarter or
            more: their prefill is cheap, and on SmolLM2 a two-turn chat of 110
            tokens cut to 64 lost the fact its system prompt stated.

    Example:
        >>> cfg = DistillConfig(selection_layers=[8, 16], keep=[0.5, 0.25])
        >>> cfg.keep
        (0.5, 0.25)
    """

    method: Literal["promptdistill"] = "promptdistill"
    # Defaults measured on SmolLM2-135M-Instruct (docs/selection.md): layer
    # 14 of 30, a quarter of the prompt, whole chunks or sentences ranked by
    # their most attended token under the query's strongest head.
    selection_layers: tuple[LayerSpec, ...] = (0.47,)
    keep: tuple[KeepSpec, ...] = (0.25,)
    pooling_kernel: int = 5
    truncate_cache: bool = True
    selector: Literal["query", "last_token"] = "query"
    signal: Literal["softmax", "logits"] = "softmax"
    head_reduction: Literal["mean", "max"] = "max"
    layer_scores: Literal["selection", "cumulative"] = "selection"
    granularity: Literal["token", "sentence", "chunk"] = "chunk"
    unit_reduction: Literal["mean", "max"] = "max"
    sink_tokens: Annotated[int, Field(ge=0)] = 4
    protected_suffix: Annotated[int, Field(ge=1)] = 8
    min_keep: Annotated[int, Field(ge=1)] = 256

    @field_validator("selection_layers", "keep", mode="before")
    @classmethod
    def _as_tuple(cls, value: object) -> object:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("selection_layers")
    @classmethod
    def _check_layers(cls, value: tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
        if not value:
            msg = "selection_layers must contain at least one layer"
            raise ValueError(msg)
        for layer in value:
            _check_layer(layer, "selection_layers")
        return value

    @field_validator("keep")
    @classmethod
    def _check_keep_values(cls, value: tuple[KeepSpec, ...]) -> tuple[KeepSpec, ...]:
        if not value:
            msg = "keep must contain at least one value"
            raise ValueError(msg)
        for item in value:
            _check_keep(item, "keep")
        return value

    @field_validator("pooling_kernel")
    @classmethod
    def _check_kernel(cls, value: int) -> int:
        return _check_pooling_kernel(value)

    @model_validator(mode="after")
    def _check_stages(self) -> DistillConfig:
        stages = len(self.selection_layers)
        if len(self.keep) not in (1, stages):
            msg = (
                f"keep has {len(self.keep)} values but selection_layers has {stages} stages: "
                "give one keep value for all stages or one per stage"
            )
            raise ValueError(msg)
        same_kind = all(isinstance(k, int) for k in self.keep) or all(isinstance(k, float) for k in self.keep)
        if same_kind and any(b > a for a, b in zip(self.keep, self.keep[1:])):
            msg = f"keep must not grow from one stage to the next, got {self.keep}"
            raise ValueError(msg)
        return self

    def keep_per_stage(self) -> tuple[KeepSpec, ...]:
        """Return one keep value for each selection stage."""
        if len(self.keep) == 1:
            return self.keep * len(self.selection_layers)
        return self.keep


class GemFilterConfig(_BaseConfig):
    """GemFilter (Shi et al., 2024, https://arxiv.org/abs/2409.17422).

    The model runs up to ``selection_layer`` on the whole prompt; the last
    token's query scores every token (attention logits summed over heads,
    average-pooled); then the whole model runs again from the first layer on
    the ``keep`` selected tokens, at fresh contiguous positions.

    Attributes:
        selection_layer: The layer whose attention selects tokens (int index, negative
            from the end, or a float fraction of the depth).
        keep: Prompt tokens kept, including the last token (count or fraction).
        min_keep: The fewest tokens a fractional ``keep`` resolves to, so that short
            prompts (a chat turn, a question without context) run whole.
        pooling_kernel: Width of the average pool over token scores (odd).
    """

    method: Literal["gemfilter"] = "gemfilter"
    selection_layer: LayerSpec = 0.5
    keep: KeepSpec = 0.25
    min_keep: Annotated[int, Field(ge=1)] = 256
    pooling_kernel: int = 5

    @field_validator("selection_layer")
    @classmethod
    def _check_layer_value(cls, value: LayerSpec) -> LayerSpec:
        return _check_layer(value, "selection_layer")

    @field_validator("keep")
    @classmethod
    def _check_keep_value(cls, value: KeepSpec) -> KeepSpec:
        return _check_keep(value, "keep")

    @field_validator("pooling_kernel")
    @classmethod
    def _check_kernel(cls, value: int) -> int:
        return _check_pooling_kernel(value)


class SnapKVConfig(_BaseConfig):
    """SnapKV (Li et al., 2024, https://arxiv.org/abs/2404.14469).

    Full prefill; then, in every layer and for every KV head, the last
    ``window`` prompt tokens' softmax attention (summed over the window,
    averaged over the query heads that share the KV head, average-pooled)
    ranks the earlier entries. The cache keeps the top ``keep - window`` of
    them plus the window.

    Attributes:
        keep: KV entries kept per layer and head, including the window.
        min_keep: The fewest tokens a fractional ``keep`` resolves to, so that short
            prompts (a chat turn, a question without context) run whole.
        window: Observation window at the end of the prompt.
        pooling_kernel: Width of the average pool over entry scores (odd).
    """

    method: Literal["snapkv"] = "snapkv"
    keep: KeepSpec = 0.25
    min_keep: Annotated[int, Field(ge=1)] = 256
    window: Annotated[int, Field(ge=1)] = 32
    pooling_kernel: int = 5

    @field_validator("keep")
    @classmethod
    def _check_keep_value(cls, value: KeepSpec) -> KeepSpec:
        return _check_keep(value, "keep")

    @field_validator("pooling_kernel")
    @classmethod
    def _check_kernel(cls, value: int) -> int:
        return _check_pooling_kernel(value)


class H2OConfig(_BaseConfig):
    """H2O, heavy-hitter oracle (Zhang et al., 2023, https://arxiv.org/abs/2306.14048).

    Full prefill; then the KV cache of every layer and head keeps ``keep``
    entries: the ``recent`` most recent ones plus the entries with the largest
    cumulative attention. Each decoding step adds its attention to the running
    sums and evicts the weakest non-recent entry, so the cache never contains more
    than ``keep`` entries between steps.

    Attributes:
        keep: KV entries per layer and head (count or fraction of the prompt).
        min_keep: The fewest tokens a fractional ``keep`` resolves to, so that short
            prompts (a chat turn, a question without context) run whole.
        recent_fraction: Share of ``keep`` reserved for the most recent entries.
    """

    method: Literal["h2o"] = "h2o"
    keep: KeepSpec = 0.25
    min_keep: Annotated[int, Field(ge=1)] = 256
    recent_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5

    @field_validator("keep")
    @classmethod
    def _check_keep_value(cls, value: KeepSpec) -> KeepSpec:
        return _check_keep(value, "keep")


class TruncateConfig(_BaseConfig):
    """Cut the context to the budget before the model sees it.

    This is what RAG pipelines do without compression. The query and the
    prompt's other non-context tokens (instructions, chat template) stay. When
    ``generate`` receives ``chunks`` in rank order, the lowest-ranked chunks go
    first and the last chunk that fits only partly keeps its beginning;
    otherwise the context (everything before the query) loses its end.

    Attributes:
        keep: Prompt tokens kept in total (count or fraction of the prompt).
        min_keep: The fewest tokens a fractional ``keep`` resolves to, so that short
            prompts (a chat turn, a question without context) run whole.
    """

    method: Literal["truncate"] = "truncate"
    keep: KeepSpec = 0.25
    min_keep: Annotated[int, Field(ge=1)] = 256

    @field_validator("keep")
    @classmethod
    def _check_keep_value(cls, value: KeepSpec) -> KeepSpec:
        return _check_keep(value, "keep")


MethodConfig = Annotated[
    Union[FullConfig, DistillConfig, GemFilterConfig, SnapKVConfig, H2OConfig, TruncateConfig],
    Field(discriminator="method"),
]
"""Any method's config, discriminated by its ``method`` field."""

_CONFIG_CLASSES: dict[str, type[_BaseConfig]] = {
    "full": FullConfig,
    "promptdistill": DistillConfig,
    "gemfilter": GemFilterConfig,
    "snapkv": SnapKVConfig,
    "h2o": H2OConfig,
    "truncate": TruncateConfig,
}

METHOD_NAMES: tuple[str, ...] = tuple(_CONFIG_CLASSES)
"""Names accepted by ``config_for_method`` and the command line's ``--method``."""

_ADAPTER: TypeAdapter = TypeAdapter(MethodConfig)


def config_for_method(method: str, **params: object) -> _BaseConfig:
    """Build the config of ``method`` from keyword parameters.

    Parameters that the method does not have raise an error instead of being
    ignored, so that ``--layer`` given to SnapKV, say, does not pass unnoticed.

    Example:
        >>> config_for_method("snapkv", keep=512, window=16).window
        16
    """
    if method not in _CONFIG_CLASSES:
        msg = f"unknown method {method!r}; valid methods are {', '.join(METHOD_NAMES)}"
        raise ValueError(msg)
    return _CONFIG_CLASSES[method](**params)


def parse_config(data: dict | str) -> _BaseConfig:
    """Build a config from a dict or a JSON string that has a ``method`` key.

    Example:
        >>> parse_config('{"method": "promptdistill", "keep": 0.5}').keep
        (0.5,)
    """
    if isinstance(data, str):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)
