"""Prefill methods: the full model, PromptDistill and the baselines it is compared with."""

from __future__ import annotations

from ..runtime import ModelRunner
from .base import Method, PrefillResult
from .full import FullMethod
from .promptdistill import PromptDistillMethod

__all__ = ["FullMethod", "Method", "PrefillResult", "PromptDistillMethod", "make_method"]

_METHODS: dict[str, type[Method]] = {
    FullMethod.name: FullMethod,
    PromptDistillMethod.name: PromptDistillMethod,
}


def make_method(config, runner: ModelRunner) -> Method:
    """Build the method object for ``config`` (any method config), checked against the runner's model."""
    method = _METHODS.get(config.method)
    if method is None:
        msg = f"method {config.method!r} is not available; available methods are {', '.join(_METHODS)}"
        raise ValueError(msg)
    return method(config, runner)
