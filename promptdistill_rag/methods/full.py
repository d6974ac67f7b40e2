"""The unmodified model, the reference for every comparison."""

from __future__ import annotations

import torch

from ..prompt import PreparedPrompt
from .base import Method, PrefillResult

__all__ = ["FullMethod"]


class FullMethod(Method):
    """Full prefill and full KV cache; the same computation as ``model.generate``."""

    name = "full"

    def check(self, prepared: PreparedPrompt) -> None:
        return None

    def prefill(self, prepared: PreparedPrompt, input_ids: torch.Tensor) -> PrefillResult:
        return self.unchanged_prefill(input_ids)
