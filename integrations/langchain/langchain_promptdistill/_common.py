"""Settings, engine loading and per-call option handling shared by the chat model and the LLM."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Annotated, Any

from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from typing_extensions import Self

from promptdistill_rag import DistillStats, GenerationStream, MethodConfig, PromptDistillEngine, parse_config
from promptdistill_rag.default_model import DEFAULT_MODEL_NAME
from promptdistill_rag.shared import shared_engine

logger = logging.getLogger(__name__)

PROVIDER = "promptdistill"
"""The ``ls_provider`` value that tracing reports."""

HINTS_KEY = "promptdistill"
"""Key in a ``HumanMessage``'s ``additional_kwargs`` whose value is ``{"query": ..., "chunks": [...]}``."""

# One definition of each sampling constraint, used by the model fields and by
# per-call keywords alike. strict=True rejects bools and numeric strings.
Temperature = Annotated[float, Field(ge=0.0, allow_inf_nan=False, strict=True)]
MaxTokens = Annotated[int, Field(ge=1, strict=True)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, strict=True)]
TopK = Annotated[int, Field(ge=1, strict=True)]
Seed = Annotated[int, Field(strict=True)]

CALL_KEYWORDS: tuple[str, ...] = (
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "seed",
    "query",
    "chunks",
    "distill_config",
    "model",
)
"""Keywords that ``invoke``, ``stream``, ``batch`` and their async forms accept per call (besides ``stop``)."""

# LangChain passes stream=True into the model's keywords when it routes an
# invoke through streaming. The keyword only selects the code path.
_ROUTING_KEYWORDS = frozenset({"stream"})

# Names people carry over from the engine or from transformers.
_RENAMED = {
    "max_new_tokens": "max_tokens",
    "config": "distill_config",
    "method_config": "distill_config",
}


def _unknown_key_message(owner: str, kind: str, unknown: Iterable[str], accepted: Iterable[str]) -> str:
    parts = []
    for key in unknown:
        hint = _RENAMED.get(key)
        parts.append(f"{key!r} (use {hint!r})" if hint else repr(key))
    return f"{owner} got unknown {kind} {', '.join(parts)}; accepted: {', '.join(sorted(accepted))}"


class CallOptions(BaseModel):
    """Per-call generation settings after merging call keywords over the model's fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="per-call options")

    temperature: Temperature
    max_tokens: MaxTokens
    top_p: TopP
    top_k: TopK | None
    seed: Seed | None
    distill_config: MethodConfig | None
    chunks: list[str] | None = None

    @field_validator("distill_config", mode="before")
    @classmethod
    def _parse_json_config(cls, value: object) -> object:
        return parse_config(value) if isinstance(value, str) else value


def load_engine(model_name: str | None, model_kwargs: Mapping[str, Any]) -> PromptDistillEngine:
    """Load an engine, or return the one already loaded with the same name and keywords.

    LangChain builds a fresh model object for every run of ``configurable_fields``,
    so engines come from the core's shared cache: while any model object
    references an engine, the others with the same ``model_name`` and
    ``model_kwargs`` reuse it.
    """
    return shared_engine(model_name, model_kwargs)


class PromptDistillParams(BaseModel):
    """Fields and helpers shared by ``ChatPromptDistill`` and ``PromptDistillLLM``.

    Every field is documented on the two public classes.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: PromptDistillEngine | None = Field(default=None, exclude=True)
    model_name: str | None = Field(default=None, alias="model")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    distill_config: MethodConfig | None = None
    temperature: Temperature = 0.0
    max_tokens: MaxTokens = 256
    top_p: TopP = 1.0
    top_k: TopK | None = None
    seed: Seed | None = None
    stop: list[str] | None = None
    query: str | None = None
    streaming: bool = False

    _loaded_engine: PromptDistillEngine | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        accepted = set(cls.model_fields)
        accepted.update(field.alias for field in cls.model_fields.values() if field.alias)
        unknown = [key for key in data if key not in accepted]
        if unknown:
            msg = _unknown_key_message(cls.__name__, "field", unknown, accepted)
            raise ValueError(msg)
        return data

    @field_validator("distill_config", mode="before")
    @classmethod
    def _parse_json_config(cls, value: object) -> object:
        return parse_config(value) if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not item for item in value):
            msg = f"stop must not contain empty strings, got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        # from_pretrained takes these two as its own parameters, so inside
        # model_kwargs they would replace the method config or the model's name.
        taken = {"config": "distill_config", "model_name": "model_name"}
        for key, field in taken.items():
            if key in value:
                msg = f"model_kwargs must not contain {key!r}; set the {field!r} field instead"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_engine_settings(self) -> Self:
        if self.engine is None:
            return self
        if self.model_kwargs:
            msg = (
                f"model_kwargs {sorted(self.model_kwargs)} only apply when the model is loaded by "
                "model_name; with an engine, load the model with those keywords yourself"
            )
            raise ValueError(msg)
        if self.model_name is not None and self.model_name != self.engine.model_name:
            msg = (
                f"model_name {self.model_name!r} does not match the engine's model {self.engine.model_name!r}; "
                "pass either an engine or a model_name to load"
            )
            raise ValueError(msg)
        if self.distill_config is not None:
            # Layer indices can only be checked against a loaded model's depth.
            self.engine.method_for(self.distill_config)
        return self

    # Engine ----------------------------------------------------------------

    @property
    def resolved_model_name(self) -> str:
        """The model's name for metadata and tracing, known without loading the model."""
        if self.engine is not None:
            return self.engine.model_name
        return self.model_name or DEFAULT_MODEL_NAME

    def get_engine(self) -> PromptDistillEngine:
        """Return the engine, loading the model on first use when none was passed."""
        if self.engine is not None:
            return self.engine
        if self._loaded_engine is None:
            self._loaded_engine = load_engine(self.model_name, self.model_kwargs)
        return self._loaded_engine

    # Per-call options --------------------------------------------------------

    def call_options(self, kwargs: Mapping[str, Any]) -> CallOptions:
        """Merge per-call keywords over the fields and validate them.

        Raises:
            ValueError: On an unknown keyword, an invalid value, or a ``model``
                other than this object's model.
        """
        unknown = [key for key in kwargs if key not in CALL_KEYWORDS and key not in _ROUTING_KEYWORDS]
        if unknown:
            msg = _unknown_key_message(type(self).__name__, "keyword argument", unknown, (*CALL_KEYWORDS, "stop"))
            raise ValueError(msg)
        model = kwargs.get("model")
        if model is not None and model != self.resolved_model_name:
            msg = (
                f"{type(self).__name__} serves {self.resolved_model_name!r} and cannot switch to model {model!r} "
                f"per call; build another {type(self).__name__} for that model"
            )
            raise ValueError(msg)
        values = {
            name: kwargs.get(name, getattr(self, name))
            for name in ("temperature", "max_tokens", "top_p", "top_k", "seed", "distill_config")
        }
        values["chunks"] = kwargs.get("chunks")
        return CallOptions.model_validate(values)

    def engine_arguments(
        self,
        prompt: str | list[dict[str, str]],
        options: CallOptions,
        *,
        stop: list[str] | None,
        query: str | None,
    ) -> dict[str, Any]:
        """Return the keyword arguments of ``engine.generate`` and ``engine.stream`` for one call."""
        return {
            "prompt": prompt,
            "query": query,
            "chunks": options.chunks,
            "config": options.distill_config,
            "max_new_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": options.top_k,
            "seed": options.seed,
            "stop": stop if stop is not None else self.stop,
        }

    # Metadata ----------------------------------------------------------------

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.resolved_model_name,
            "model_kwargs": self.model_kwargs,
            "distill_config": self.distill_config.model_dump() if self.distill_config is not None else None,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "query": self.query,
        }

    def tracing_params(self, model_type: str, stop: list[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Return the LangSmith parameters; per-call ``model``, ``temperature`` and ``max_tokens`` win."""
        params: dict[str, Any] = {
            "ls_provider": PROVIDER,
            "ls_model_name": kwargs.get("model") or self.resolved_model_name,
            "ls_model_type": model_type,
            "ls_temperature": kwargs.get("temperature", self.temperature),
            "ls_max_tokens": kwargs.get("max_tokens", self.max_tokens),
        }
        stop_sequences = stop if stop is not None else self.stop
        if stop_sequences:
            params["ls_stop"] = list(stop_sequences)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Return the token ids the model reads for ``text`` as a plain string prompt.

        A ``custom_get_token_ids`` function, when set, replaces the model's tokenizer.
        """
        custom = getattr(self, "custom_get_token_ids", None)
        if custom is not None:
            return custom(text)
        return self.count_prompt_tokens(text)

    def count_prompt_tokens(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Return the token ids the model reads for ``prompt`` (an empty list for empty text)."""
        if isinstance(prompt, str) and not prompt.strip():
            return []
        return list(self.get_engine().prepare(prompt).input_ids)


def usage_metadata(stats: DistillStats) -> UsageMetadata:
    """Return LangChain token usage: the whole prompt as input, the generated tokens as output."""
    return UsageMetadata(
        input_tokens=stats.prompt_tokens,
        output_tokens=stats.generated_tokens,
        total_tokens=stats.prompt_tokens + stats.generated_tokens,
    )


def stats_metadata(stats: DistillStats) -> dict[str, Any]:
    """Return the call's stats for ``response_metadata``, without the per-token ``kept_indices`` list."""
    return stats.model_dump(exclude={"kept_indices"})


def response_metadata(model_name: str, stats: DistillStats) -> dict[str, Any]:
    """Return ``response_metadata``: model name, finish reason and the distillation stats."""
    return {
        "model_name": model_name,
        "finish_reason": stats.finish_reason,
        "distill_stats": stats_metadata(stats),
    }


class _PullState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.abandoned = False


_DONE = object()


def _pull(stream: GenerationStream, state: _PullState) -> object:
    try:
        return next(stream, _DONE)
    finally:
        with state.lock:
            state.running = False
            if state.abandoned:
                stream.close()


async def start_stream_in_thread(owner: PromptDistillParams, arguments: Mapping[str, Any]) -> GenerationStream:
    """Start the engine's stream in a worker thread.

    The first call may load the model, and ``engine.stream`` tokenizes and
    checks the whole prompt; neither should block the event loop.
    """
    return await asyncio.to_thread(lambda: owner.get_engine().stream(**arguments))


async def pieces_in_thread(stream: GenerationStream) -> AsyncIterator[str]:
    """Yield the stream's pieces while each step (prefill, then one token) runs in a worker thread.

    The event loop stays free while the model runs. When the consumer stops
    early or is cancelled, the stream is closed: at once if no step is
    running, else as soon as the running step returns.
    """
    loop = asyncio.get_running_loop()
    state = _PullState()
    step: asyncio.Future[object] | None = None
    try:
        while True:
            with state.lock:
                state.running = True
            step = loop.run_in_executor(None, _pull, stream, state)
            # shield() keeps a cancellation from dropping a step that has not
            # started yet, because only a step that runs can close the stream.
            piece = await asyncio.shield(step)
            if piece is _DONE:
                return
            yield piece  # type: ignore[misc]
    finally:
        with state.lock:
            state.abandoned = True
            if not state.running:
                stream.close()
        if step is not None and not step.done():
            step.add_done_callback(_discard_result)


def _discard_result(step: asyncio.Future[object]) -> None:
    # Retrieving the exception of an abandoned step keeps asyncio from
    # logging "exception was never retrieved" for it.
    if not step.cancelled():
        step.exception()
