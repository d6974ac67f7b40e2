"""PromptDistillLLM: a LangChain string-in, string-out LLM around a local PromptDistill engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun, Callbacks
from langchain_core.language_models import BaseLLM, LangSmithParams, LanguageModelInput
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict

from promptdistill_rag import DistillStats

from ._common import (
    PromptDistillParams,
    pieces_in_thread,
    start_stream_in_thread,
    stats_metadata,
    usage_metadata,
)
from ._messages import RetrievalHints, last_user_hints

__all__ = ["PromptDistillLLM"]


_NO_HINTS = RetrievalHints()

_PROMPT_HINTS: ContextVar[Mapping[str, RetrievalHints]] = ContextVar("promptdistill_prompt_hints", default={})
"""Hints of the prompts in the running ``generate_prompt`` call, keyed by prompt text."""


def _input_hints(value: object) -> RetrievalHints:
    if isinstance(value, ChatPromptValue):
        return last_user_hints(value.messages)
    return _NO_HINTS


def _hints_by_text(prompts: list[PromptValue]) -> dict[str, RetrievalHints]:
    hints = {}
    for prompt in prompts:
        found = _input_hints(prompt)
        if found.query is not None or found.chunks is not None:
            hints[prompt.to_string()] = found
    return hints


class PromptDistillLLM(PromptDistillParams, BaseLLM):
    """LLM that runs a local causal LM through a PromptDistill engine: string in, string out.

    The prompt string goes to the model as it is, without a chat template;
    for instruction-tuned models ``ChatPromptDistill`` usually answers better.
    After an early layer, the model's own attention picks the prompt tokens
    that matter for the question and the remaining layers run on those alone
    (PromptDistill, https://arxiv.org/abs/2503.23274).

    Setup:
        .. code-block:: bash

            pip install langchain-promptdistill

    Key init args:
        engine: A loaded ``promptdistill_rag.PromptDistillEngine``. One engine
            can serve many models and chains; building a model around it loads nothing.
        model_name: A Hugging Face model id or local path to load on first use
            when no engine is given (alias ``model``). With neither, the
            embedded default model SmolLM2-135M-Instruct is loaded on first use.
        model_kwargs: Keywords for ``PromptDistillEngine.from_pretrained``
            (``dtype``, ``device_map``, ``revision``, ...); only with ``model_name``
            or the default model.
        distill_config: The compression method and its settings: a method config
            (``DistillConfig``, ``FullConfig``, ...), a dict or a JSON string
            with a ``method`` key. The engine calls this keyword ``config``, but
            LangChain uses ``config`` for the ``RunnableConfig``. None uses the
            engine's default.
        temperature, max_tokens, top_p, top_k, seed, stop: Decoding settings;
            ``max_tokens`` is the engine's ``max_new_tokens``. Temperature 0 is greedy.
        query: The user's question as it appears in the prompt, for every call.
        streaming: Route ``invoke`` through streaming, so that callbacks get every token.

    Per-call keywords:
        ``temperature``, ``max_tokens``, ``top_p``, ``top_k``, ``seed``,
        ``stop``, ``distill_config``, ``query``, ``chunks`` (retrieved passages
        as they appear in the prompt, best first) and ``model`` (only this
        model's own name). Any other keyword raises ``ValueError``.

    Which tokens are the query:
        The first that applies: ``query=`` passed to the call (``query=None``
        turns the other rules off), the ``query`` field, or the query that
        ``format_docs_for_promptdistill`` or ``PromptDistillRAGPrompt`` stored
        in the prompt value. With none, the engine scores with the last prompt
        token's attention and reports ``query_source="last_token"``. The
        passages (``chunks``) come from the call keyword or the prompt value.

    Streaming and async:
        ``stream`` yields the engine's text pieces as it decodes, then an empty
        string whose generation info carries the stats. Joined, the pieces
        equal ``invoke``'s text for a greedy call. The async methods run every model
        step in a worker thread, so the event loop stays free.

    Output:
        Each ``Generation``'s ``generation_info`` holds ``finish_reason``,
        ``usage_metadata`` (input, output and total tokens) and ``distill_stats``;
        ``llm_output`` holds ``model_name`` and the summed ``token_usage``.

    Example:
        .. code-block:: python

            from langchain_promptdistill import PromptDistillLLM

            # Loads the default model on first use; a prompt this short stays whole.
            llm = PromptDistillLLM(max_tokens=32)
            llm.invoke("The capital of France is")
    """

    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, protected_namespaces=()
    )

    @property
    def _llm_type(self) -> str:
        return "promptdistill"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.tracing_params("llm", stop, kwargs))

    # Retrieval hints in the input ------------------------------------------
    # BaseLLM turns prompt values into plain strings before _generate and
    # _stream see them, so the hints of RAG prompt values travel beside them.
    # generate_prompt, which invoke, batch and their async forms call, keys
    # them by prompt text. stream and astream pass them as call keywords.

    def generate_prompt(
        self,
        prompts: list[PromptValue],
        stop: list[str] | None = None,
        callbacks: Callbacks | list[Callbacks] | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        token = _PROMPT_HINTS.set(_hints_by_text(prompts))
        try:
            return super().generate_prompt(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _PROMPT_HINTS.reset(token)

    async def agenerate_prompt(
        self,
        prompts: list[PromptValue],
        stop: list[str] | None = None,
        callbacks: Callbacks | list[Callbacks] | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        token = _PROMPT_HINTS.set(_hints_by_text(prompts))
        try:
            return await super().agenerate_prompt(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _PROMPT_HINTS.reset(token)

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **self._with_hints(_input_hints(input), kwargs))

    def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **self._with_hints(_input_hints(input), kwargs))

    def _with_hints(self, hints: RetrievalHints, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = dict(kwargs)
        if hints.query is not None and "query" not in merged and self.query is None:
            merged["query"] = hints.query
        if hints.chunks is not None and "chunks" not in merged:
            merged["chunks"] = hints.chunks
        return merged

    # Generation ------------------------------------------------------------

    def _request(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        options = self.call_options(kwargs)
        query = kwargs["query"] if "query" in kwargs else self.query
        return self.engine_arguments(prompt, options, stop=stop, query=query)

    def _generation_info(self, stats: DistillStats) -> dict[str, Any]:
        return {
            "finish_reason": stats.finish_reason,
            "usage_metadata": dict(usage_metadata(stats)),
            "distill_stats": stats_metadata(stats),
        }

    def _llm_result(self, generations: list[Generation]) -> LLMResult:
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for generation in generations:
            for key, value in (generation.generation_info or {}).get("usage_metadata", {}).items():
                usage[key] += value
        return LLMResult(
            generations=[[generation] for generation in generations],
            llm_output={"model_name": self.resolved_model_name, "token_usage": usage},
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            call = self._with_hints(_PROMPT_HINTS.get().get(prompt, _NO_HINTS), kwargs)
            if self.streaming:
                chunks = list(self._stream(prompt, stop=stop, run_manager=run_manager, **call))
                text = "".join(chunk.text for chunk in chunks)
                info = chunks[-1].generation_info
            else:
                result = self.get_engine().generate(**self._request(prompt, stop, call))
                text, info = result.text, self._generation_info(result.stats)
            generations.append(Generation(text=text, generation_info=info))
        return self._llm_result(generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            call = self._with_hints(_PROMPT_HINTS.get().get(prompt, _NO_HINTS), kwargs)
            # Without streaming, callbacks get no tokens, as in the sync path.
            manager = run_manager if self.streaming else None
            chunks = [chunk async for chunk in self._astream(prompt, stop=stop, run_manager=manager, **call)]
            text = "".join(chunk.text for chunk in chunks)
            generations.append(Generation(text=text, generation_info=chunks[-1].generation_info))
        return self._llm_result(generations)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        stream = self.get_engine().stream(**self._request(prompt, stop, kwargs))
        try:
            for piece in stream:
                chunk = GenerationChunk(text=piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            stream.close()
        chunk = GenerationChunk(text="", generation_info=self._generation_info(stream.result.stats))
        if run_manager is not None:
            run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        stream = await start_stream_in_thread(self, self._request(prompt, stop, kwargs))
        async for piece in pieces_in_thread(stream):
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        chunk = GenerationChunk(text="", generation_info=self._generation_info(stream.result.stats))
        if run_manager is not None:
            await run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk
