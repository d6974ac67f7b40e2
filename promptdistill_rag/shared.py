"""One loaded engine per model and loading options, shared by every caller in the process.

Framework integrations build many model objects: LangChain re-creates them
for configurable fields, and several LlamaIndex components keep their own
LLM. Without a shared cache, each of them would load the weights again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from .engine import PromptDistillEngine

__all__ = ["shared_engine"]

logger = logging.getLogger(__name__)

_ENGINES: weakref.WeakValueDictionary[str, PromptDistillEngine] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def shared_engine(model_name: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> PromptDistillEngine:
    """Load an engine, or return the one already loaded with the same model and keywords.

    The cache references engines weakly. While any caller references an
    engine, calls with the same ``model_name`` and ``model_kwargs`` reuse it,
    and once no caller does, the weights can be freed.

    Args:
        model_name: A Hub id or local path; None loads the embedded default model.
        model_kwargs: Keywords for ``PromptDistillEngine.from_pretrained`` (or ``from_default``).

    Example:
        >>> engine = shared_engine()  # doctest: +SKIP
        >>> shared_engine() is engine  # doctest: +SKIP
        True
    """
    model_kwargs = dict(model_kwargs or {})
    # repr() makes unhashable values (dicts, quantization configs) usable in the
    # key; two equal values with different reprs only cost a second load.
    key = repr((model_name, sorted((name, repr(value)) for name, value in model_kwargs.items())))
    # NOTE: loading happens under the lock, so a load of one model also makes
    # callers that want another model wait until it finishes.
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if model_name is None:
                logger.info("Loading the default model")
                engine = PromptDistillEngine.from_default(**model_kwargs)
            else:
                logger.info("Loading model %s", model_name)
                engine = PromptDistillEngine.from_pretrained(model_name, **model_kwargs)
            _ENGINES[key] = engine
    return engine
