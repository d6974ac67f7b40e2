"""Prefill methods: the full model, PromptDistill and the baselines it is compared with."""

from __future__ import annotations

from ..runtime import ModelRunner
from .base import Method, PrefillResult
from .full import FullMethod
from .gemfilter import GemFilterMethod
from .h2o import H2OMethod
from .promptdistill import PromptDistillMethod
from .snapkv import SnapKVMethod
from .truncate import TruncateMethod

__all__ = [
    "FullMethod",
    "GemFilterMethod",
    "H2OMethod",
    "Method",
    "PrefillResult",
    "PromptDistillMethod",
    "SnapKVMethod",
    "TruncateMethod",
    "make_method",
]

_METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (FullMethod, PromptDistillMethod, GemFilterMethod, SnapKVMethod, H2OMethod, TruncateMethod)
}


def make_method(config, runner: ModelRunner) -> Method:
    """Build the method object for ``config`` (any method config), checked against the runner's model."""
    method = _METHODS.get(config.method)
    if method is None:
        msg = f"method {config.method!r} is not available; available methods are {', '.join(_METHODS)}"
        raise ValueError(msg)
    return method(config, runner)
