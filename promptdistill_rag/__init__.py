"""promptdistill-rag: hand a local LLM the whole retriever output.

The model itself picks, after an early layer, the context tokens that matter
for the question and runs its remaining layers on those alone
(PromptDistill, https://arxiv.org/abs/2503.23274).

Example:
    >>> from promptdistill_rag import PromptDistillEngine, DistillConfig
    >>> engine = PromptDistillEngine.from_default()  # doctest: +SKIP
    >>> engine.generate("...long context...\\nQuestion: Who?", query="Who?").text  # doctest: +SKIP
"""

import logging

from .config import (
    METHOD_NAMES,
    DistillConfig,
    FullConfig,
    GemFilterConfig,
    H2OConfig,
    MethodConfig,
    SnapKVConfig,
    TruncateConfig,
    config_for_method,
    parse_config,
)
from .engine import SUPPORTED_MODEL_TYPES, DistillStats, GenerationResult, GenerationStream, PromptDistillEngine

__all__ = [
    "METHOD_NAMES",
    "SUPPORTED_MODEL_TYPES",
    "DistillConfig",
    "DistillStats",
    "FullConfig",
    "GemFilterConfig",
    "GenerationResult",
    "GenerationStream",
    "H2OConfig",
    "MethodConfig",
    "PromptDistillEngine",
    "SnapKVConfig",
    "TruncateConfig",
    "config_for_method",
    "parse_config",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
