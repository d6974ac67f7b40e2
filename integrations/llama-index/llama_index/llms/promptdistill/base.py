"""LlamaIndex LLM that runs a local model through promptdistill-rag.

The model reads the whole retriever output, and after an early layer its own
attention keeps the context tokens that matter for the user's question
(PromptDistill, https://arxiv.org/abs/2503.23274).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen

from llama_index.llms.promptdistill.utils import (
    chat_dicts,
    chat_response,
    chat_stream,
    completion_response,
    completion_stream,
    in_worker_threads,
)
from promptdistill_rag import MethodConfig, PromptDistillEngine
from promptdistill_rag.default_model import DEFAULT_MODEL_NAME
from promptdistill_rag.shared import shared_engine

__all__ = ["CALL_KEYWORDS", "PromptDistillLLM"]

logger = logging.getLogger(__name__)

CALL_KEYWORDS: tuple[str, ...] = (
    "query",
    "chunks",
    "distill_config",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
)
"""Keywords that ``complete``, ``chat`` and their stream and async variants accept."""

# The question LlamaIndex put into the prompt template's ``query_str`` during
# the predict/stream/apredict/astream call that is running in this context.
# A context variable keeps concurrent threads and asyncio tasks apart.
_TEMPLATE_QUERY: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "promptdistill_template_query", default=None
)
# The retrieved text LlamaIndex put into ``context_str`` in that same call.
# Response synthesizers join node texts with blank lines, so its blank-line
# separated parts become the engine's chunks and whole passages are ranked.
_TEMPLATE_CONTEXT: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "promptdistill_template_context", default=None
)

# Names carried over from the engine, from transformers or from other LLM classes.
_RENAMED: dict[str, str] = {
    "config": "use 'distill_config'",
    "method_config": "use 'distill_config'",
    "max_tokens": "use 'max_new_tokens'",
    "num_output": "use 'max_new_tokens'",
    "model": "use 'model_name'",
    "model_id": "use 'model_name'",
    "context_window": "it is always the model's position limit",
}


def _last_user_query(messages: Sequence[Mapping[str, str]]) -> Optional[str]:
    """Return the last user message, stripped, when the messages before it are longer together.

    Longer earlier messages mean that a system prompt or earlier turns hold
    the context. A lone question has nothing to select from, so it gets None.
    """
    if not messages or messages[-1]["role"] != "user":
        return None
    question = messages[-1]["content"].strip()
    earlier = sum(len(message["content"]) for message in messages[:-1])
    return question if question and earlier > len(question) else None


def _unknown_key_message(kind: str, unknown: Sequence[str], accepted: Sequence[str]) -> str:
    parts = []
    for key in unknown:
        hint = _RENAMED.get(key)
        parts.append(f"{key!r} ({hint})" if hint else repr(key))
    return f"PromptDistillLLM got unknown {kind} {', '.join(parts)}; accepted: {', '.join(sorted(accepted))}"


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(msg, *args)


@dataclass(frozen=True)
class _Request:
    """One engine call: the engine and the keyword arguments of its ``generate``/``stream``."""

    engine: PromptDistillEngine
    kwargs: dict[str, Any]


def _template_value(prompt: BasePromptTemplate, prompt_args: Mapping[str, Any], name: str) -> Optional[str]:
    value = prompt_args.get(name)
    if value is None:
        value = (prompt.kwargs or {}).get(name)
    if isinstance(value, str) and value.strip():
        return value
    return None


@contextlib.contextmanager
def _template_scope(prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]) -> Iterator[None]:
    query_token = _TEMPLATE_QUERY.set(_template_value(prompt, prompt_args, "query_str"))
    context_token = _TEMPLATE_CONTEXT.set(_template_value(prompt, prompt_args, "context_str"))
    try:
        yield
    finally:
        _TEMPLATE_CONTEXT.reset(context_token)
        _TEMPLATE_QUERY.reset(query_token)


def _context_chunks(context: Optional[str], texts: Sequence[str]) -> Optional[list[str]]:
    """Split the template's ``context_str`` at blank lines into the chunks that appear in the prompt."""
    if context is None:
        return None
    parts = [part.strip() for part in re.split(r"\n\s*\n", context)]
    chunks = [part for part in parts if part and any(part in text for text in texts)]
    return chunks or None


class PromptDistillLLM(CustomLLM):
    """A local transformers LLM that reads whole retriever outputs through PromptDistill.

    After an early layer the model's attention picks the context tokens that
    matter for the user's question, and the remaining layers run on those
    tokens alone (https://arxiv.org/abs/2503.23274). The question is taken
    from the prompt template's ``query_str`` during ``predict``, ``stream``,
    ``apredict`` and ``astream`` (which is how query engines and response
    synthesizers call an LLM), or from an explicit ``query=`` keyword. With
    neither, the last prompt token's attention selects, and each response's
    stats record which rule ran (``query_source``).

    Build it from a loaded engine, from a model id or path (loaded on first
    use), or from nothing (the embedded default model, SmolLM2-135M-Instruct,
    loaded on first use).

    Responses carry the call's stats: ``raw["stats"]`` contains ``DistillStats``
    as a dict, ``additional_kwargs["distill_stats"]`` the same without
    ``kept_indices``, and ``raw["usage"]`` and ``additional_kwargs`` the token
    counts (``prompt_tokens``, ``completion_tokens``, ``total_tokens``). A
    stream ends with one response whose ``delta`` is empty and which carries them.

    Prompt formatting:
        ``chat`` renders the messages with the tokenizer's chat template (or
        with ``messages_to_prompt`` when you pass one). ``complete`` and
        ``stream_complete`` format alike. With ``formatted=True`` the string
        goes to the model as it is. With ``formatted=False``, a
        ``completion_to_prompt`` you passed formats it; without one, the chat
        template wraps it as a user message, after ``system_prompt`` as a
        system message. ``is_chat_model`` defaults to whether the tokenizer has
        a chat template, so that LlamaIndex's ``predict`` sends chat messages.

    Async:
        ``acomplete``, ``achat``, ``astream_complete`` and ``astream_chat``
        run loading, prefill and every decoding step in worker threads; the
        engine's lock still lets one forward pass run at a time.

    Examples:
        `pip install llama-index-llms-promptdistill`

        ```python
        from llama_index.llms.promptdistill import PromptDistillLLM

        llm = PromptDistillLLM()  # SmolLM2-135M-Instruct, loaded on first use
        response = llm.complete(f"{documents}\n\nQuestion: {question}", query=question)
        print(response.text, response.raw["stats"]["kept_tokens"])
        ```

    Limitations:
        Text only: no images, tools or function calling. ``context_window`` is
        the model's position limit, which the prompt and ``max_new_tokens``
        share. Only what the template's ``query_str`` holds, or ``query=``, is
        the query, except in ``chat``: chat engines call it directly, so there
        the last user message is the query when the messages before it are
        longer together (a system prompt or earlier turns hold the context).
        Short prompts (under ``min_keep`` tokens, 256 by default) run whole.
    """

    # Unknown constructor fields raise instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    model_name: Optional[str] = Field(
        default=None,
        description=(
            "Hugging Face model id or local path, loaded on first use. None, without an engine, "
            "loads the embedded default model SmolLM2-135M-Instruct."
        ),
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for PromptDistillEngine.from_pretrained: dtype, device_map, revision, ...",
    )
    distill_config: Optional[MethodConfig] = Field(
        default=None,
        description=(
            "Default method config of every call (DistillConfig, FullConfig, ...; a dict with a "
            "'method' key works too). None uses the engine's default."
        ),
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Maximum number of tokens to generate; LlamaIndex's num_output.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 for greedy decoding, else the sampling temperature.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(default=None, gt=0, description="Sample among the top_k most likely tokens.")
    seed: Optional[int] = Field(default=None, description="Seed for reproducible sampling.")
    stop: Optional[list[str]] = Field(default=None, description="Stop strings; the text ends before the first one.")
    is_chat_model: Optional[bool] = Field(
        default=None,
        description="Whether LlamaIndex sends chat messages; None means: when the tokenizer has a chat template.",
    )

    _engine: Optional[PromptDistillEngine] = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, *, engine: Optional[PromptDistillEngine] = None, **data: Any) -> None:
        """Build the LLM; with ``engine`` it uses that engine, else it loads one on first use.

        Args:
            engine: A loaded ``PromptDistillEngine``; it may be shared with other
                integrations in the same process.
            **data: The fields above.

        Raises:
            ValueError: On an unknown field, on ``engine`` together with
                ``model_name`` or ``model_kwargs``, or, with ``engine``, when
                ``distill_config`` does not fit the model or ``max_new_tokens``
                leaves no room for context.
            TypeError: If ``engine`` is not a ``PromptDistillEngine``.
        """
        super().__init__(**data)
        if engine is None:
            return
        if not isinstance(engine, PromptDistillEngine):
            msg = f"engine must be a PromptDistillEngine, got {type(engine).__name__}"
            raise TypeError(msg)
        conflicting = [name for name in ("model_name", "model_kwargs") if getattr(self, name)]
        if conflicting:
            msg = (
                f"pass either engine or {' and '.join(conflicting)}, not both: "
                "an engine already holds its loaded model"
            )
            raise ValueError(msg)
        self._check_num_output(engine)
        self._check_distill_config(engine)
        self._engine = engine

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        # Pydantic's own extra="forbid" message gives no hint for renamed fields.
        if isinstance(data, Mapping):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(_unknown_key_message("field", unknown, list(cls.model_fields)))
        return data

    @classmethod
    def class_name(cls) -> str:
        return "PromptDistillLLM"

    # Engine -----------------------------------------------------------------

    @property
    def engine(self) -> PromptDistillEngine:
        """The engine; the first access loads the model when none was given.

        Raises:
            ValueError: If ``max_new_tokens`` leaves no room for context, or
                (on the access that loads the model) ``distill_config`` does not fit it.
        """
        engine = self._engine
        if engine is None:
            with self._load_lock:
                engine = self._engine
                if engine is None:
                    engine = self._load_engine()
                    # Keep the engine even if a check fails, so that fixing
                    # the setting does not load the weights again.
                    self._engine = engine
                    self._check_distill_config(engine)
        self._check_num_output(engine)
        return engine

    @property
    def engine_loaded(self) -> bool:
        """Whether the engine is in memory (given at construction or loaded since)."""
        return self._engine is not None

    def _load_engine(self) -> PromptDistillEngine:
        # LLMs built with the same model and keywords share one loaded engine.
        return shared_engine(self.model_name, self.model_kwargs)

    def _check_num_output(self, engine: PromptDistillEngine) -> None:
        limit = engine.max_positions
        if limit is not None and self.max_new_tokens >= limit:
            msg = (
                f"max_new_tokens (num_output) is {self.max_new_tokens} but {engine.model_name} has only "
                f"{limit} positions, which the prompt and the output share, so no room is left for "
                f"context; set max_new_tokens below {limit}"
            )
            raise ValueError(msg)

    def _check_distill_config(self, engine: PromptDistillEngine) -> None:
        if self.distill_config is not None:
            # Layer indices can only be checked against the loaded model's depth.
            engine.method_for(self.distill_config)

    # Metadata ---------------------------------------------------------------

    @property
    def metadata(self) -> LLMMetadata:
        """LLM metadata; ``context_window`` is the model's position limit. Loads the engine if needed."""
        engine = self.engine
        context_window = engine.max_positions
        if context_window is None:
            # NOTE: every architecture the engine supports records its limit,
            # so this fallback only applies to configs that omit it.
            _warn_once(
                f"no-limit:{engine.model_name}",
                "%s records no position limit; reporting LlamaIndex's default context window of %d",
                engine.model_name,
                DEFAULT_CONTEXT_WINDOW,
            )
            context_window = DEFAULT_CONTEXT_WINDOW
        return LLMMetadata(
            context_window=context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self._is_chat_model(engine),
            is_function_calling_model=False,
            model_name=engine.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        """Describe this LLM for instrumentation events without loading the engine."""
        method = getattr(self.distill_config, "method", None)
        if self._engine is None:
            return {
                "class_name": self.class_name(),
                "model_name": self.model_name or DEFAULT_MODEL_NAME,
                "num_output": self.max_new_tokens,
                "distill_method": method,
            }
        return {**super().to_payload(), "distill_method": method or self._engine.config.method}

    def _is_chat_model(self, engine: PromptDistillEngine) -> bool:
        if self.is_chat_model is not None:
            return self.is_chat_model
        return bool(getattr(engine.tokenizer, "chat_template", None))

    def prompt_helper(self, **kwargs: Any) -> PromptHelper:
        """Build a ``PromptHelper`` that counts tokens with this model's tokenizer.

        LlamaIndex's own helper counts with a GPT tokenizer and ignores the
        chat template, so it can pack more text into one call than the model
        has positions for. This one uses the model's tokenizer and reserves
        the tokens that the chat template adds around a system and a user message.

        Args:
            **kwargs: Passed to ``PromptHelper``: ``chunk_overlap_ratio``,
                ``chunk_size_limit`` (caps each packed chunk, which splits the
                context over more calls), ``separator``.

        Example:
            >>> synthesizer = get_response_synthesizer(
            ...     llm=llm, prompt_helper=llm.prompt_helper(), response_mode="compact"
            ... )  # doctest: +SKIP
        """
        engine = self.engine
        metadata = self.metadata
        reserved = 0
        if self._is_chat_model(engine) and getattr(engine.tokenizer, "chat_template", None):
            reserved = engine.count_tokens([{"role": "system", "content": "."}, {"role": "user", "content": "."}])
        tokenizer = functools.partial(engine.tokenizer.encode, add_special_tokens=False)
        return PromptHelper(
            context_window=metadata.context_window - reserved,
            num_output=metadata.num_output,
            tokenizer=tokenizer,
            **kwargs,
        )

    # Query capture ----------------------------------------------------------

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        """Format a prompt template and complete it; its ``query_str`` becomes the query that drives selection."""
        with _template_scope(prompt, prompt_args):
            return super().predict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        """Format a prompt template and stream the completion; its ``query_str`` drives selection."""
        # The engine call starts inside super().stream(), so the scope may end before the tokens are read.
        with _template_scope(prompt, prompt_args):
            return super().stream(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        """Format a prompt template and complete it without blocking the event loop; ``query_str`` drives selection."""
        with _template_scope(prompt, prompt_args):
            return await super().apredict(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        """Format a prompt template and stream the completion without blocking the event loop; ``query_str`` drives selection."""
        with _template_scope(prompt, prompt_args):
            return await super().astream(prompt, **prompt_args)

    # Requests ---------------------------------------------------------------

    def _check_keywords(self, kwargs: Mapping[str, Any]) -> None:
        unknown = [key for key in kwargs if key not in CALL_KEYWORDS]
        if unknown:
            raise ValueError(_unknown_key_message("keyword argument", unknown, CALL_KEYWORDS))

    def _resolve_query(
        self, kwargs: Mapping[str, Any], texts: Sequence[str], fallback: Optional[str] = None
    ) -> Optional[str]:
        # An explicit query=, even None, wins over the template's query_str,
        # which wins over the chat fallback.
        if "query" in kwargs:
            return kwargs["query"]
        query = _TEMPLATE_QUERY.get()
        if query is None:
            return fallback
        if any(query.strip() in text for text in texts):
            return query
        _warn_once(
            "query-missing",
            "the prompt template's query_str does not appear in the prompt, so the last prompt token "
            "selects the context instead; pass query= to complete or chat to choose the query",
        )
        return None

    def _request(
        self,
        prompt: Union[str, list[dict[str, str]]],
        texts: Sequence[str],
        kwargs: Mapping[str, Any],
        fallback_query: Optional[str] = None,
    ) -> _Request:
        return _Request(
            engine=self.engine,
            kwargs={
                "prompt": prompt,
                "query": self._resolve_query(kwargs, texts, fallback_query),
                "chunks": kwargs["chunks"] if "chunks" in kwargs else _context_chunks(_TEMPLATE_CONTEXT.get(), texts),
                "config": kwargs.get("distill_config", self.distill_config),
                "max_new_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
                "temperature": kwargs.get("temperature", self.temperature),
                "top_p": kwargs.get("top_p", self.top_p),
                "top_k": kwargs.get("top_k", self.top_k),
                "seed": kwargs.get("seed", self.seed),
                "stop": kwargs.get("stop", self.stop),
            },
        )

    def _completion_request(self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]) -> _Request:
        self._check_keywords(kwargs)
        if not isinstance(prompt, str):
            msg = f"prompt must be a string, got {type(prompt).__name__}"
            raise TypeError(msg)
        if formatted:
            return self._request(prompt, [prompt], kwargs)
        if self.completion_to_prompt is not default_completion_to_prompt:
            text = self.completion_to_prompt(prompt)
            return self._request(text, [text], kwargs)
        engine = self.engine
        if not getattr(engine.tokenizer, "chat_template", None):
            text = f"{self.system_prompt}\n\n{prompt}" if self.system_prompt else prompt
            return self._request(text, [text], kwargs)
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self._request(messages, [prompt], kwargs)

    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> _Request:
        self._check_keywords(kwargs)
        if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
            msg = f"messages must be a list of ChatMessage, got {type(messages).__name__}"
            raise TypeError(msg)
        for index, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                msg = f"message {index} must be a ChatMessage, got {type(message).__name__}"
                raise TypeError(msg)
        if self.messages_to_prompt is not generic_messages_to_prompt:
            text = self.messages_to_prompt(messages)
            return self._request(text, [text], kwargs)
        converted = chat_dicts(messages)
        engine = self.engine
        if not getattr(engine.tokenizer, "chat_template", None):
            text = generic_messages_to_prompt(messages)
            return self._request(text, [text], kwargs)
        return self._request(converted, [m["content"] for m in converted], kwargs, _last_user_query(converted))

    # Engine calls, shared by the sync and async methods --------------------

    def _run_complete(self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]) -> CompletionResponse:
        request = self._completion_request(prompt, formatted, kwargs)
        return completion_response(request.engine.generate(**request.kwargs))

    def _start_stream_complete(self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]) -> CompletionResponseGen:
        request = self._completion_request(prompt, formatted, kwargs)
        # engine.stream checks every argument now, so bad input raises here, not on the first next().
        return completion_stream(request.engine.stream(**request.kwargs))

    def _run_chat(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> ChatResponse:
        request = self._chat_request(messages, kwargs)
        return chat_response(request.engine.generate(**request.kwargs))

    def _start_stream_chat(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> ChatResponseGen:
        request = self._chat_request(messages, kwargs)
        return chat_stream(request.engine.stream(**request.kwargs))

    # LlamaIndex LLM interface -----------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete a prompt.

        Args:
            prompt: The prompt text.
            formatted: True if the prompt is final; False to format it (see the class docstring).
            **kwargs: Any of ``CALL_KEYWORDS``: ``query`` (the user's question as it
                appears in the prompt), ``chunks`` (retrieved passages as they appear
                in it, best first), ``distill_config`` and the sampling settings.

        Raises:
            ValueError: On an unknown keyword, an empty prompt, a prompt over the position limit or a
                ``query`` not found in the prompt.
        """
        return self._run_complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Complete a prompt piece by piece; takes the same arguments as ``complete``."""
        return self._start_stream_complete(prompt, formatted, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Generate the assistant's reply to chat messages, rendered with the tokenizer's chat template.

        Takes the keywords of ``complete``.
        """
        return self._run_chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Generate the assistant's reply piece by piece; takes the keywords of ``complete``."""
        return self._start_stream_chat(messages, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete a prompt in a worker thread."""
        return await asyncio.to_thread(self._run_complete, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Complete a prompt piece by piece, each step in a worker thread."""
        responses = await asyncio.to_thread(self._start_stream_complete, prompt, formatted, kwargs)
        return in_worker_threads(responses)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Generate the assistant's reply in a worker thread."""
        return await asyncio.to_thread(self._run_chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Generate the assistant's reply piece by piece, each step in a worker thread."""
        responses = await asyncio.to_thread(self._start_stream_chat, messages, kwargs)
        return in_worker_threads(responses)
