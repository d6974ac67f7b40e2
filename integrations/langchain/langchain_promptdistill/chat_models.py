"""ChatPromptDistill: a LangChain chat model around a local PromptDistill engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from promptdistill_rag import DistillStats

from ._common import (
    PromptDistillParams,
    pieces_in_thread,
    response_metadata,
    start_stream_in_thread,
    usage_metadata,
)
from ._messages import is_user_message, last_user_hints, message_text, to_chat_messages

__all__ = ["ChatPromptDistill"]


class ChatPromptDistill(PromptDistillParams, BaseChatModel):
    """Chat model that runs a local causal LM through a PromptDistill engine.

    After an early layer, the model's own attention picks the prompt tokens
    that matter for the user's question and the remaining layers run on those
    alone (PromptDistill, https://arxiv.org/abs/2503.23274), so a RAG chain can
    hand it the whole retriever output. Messages are rendered with the
    tokenizer's chat template: ``SystemMessage`` is the system role,
    ``HumanMessage`` the user and ``AIMessage`` the assistant.

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
        query: The user's question as it appears in the prompt, for every call
            (usually left unset and exposed through ``configurable_fields``).
        streaming: Route ``invoke`` through streaming, so that callbacks get every token.

    Per-call keywords:
        ``invoke``, ``stream``, ``batch`` and their async forms accept
        ``temperature``, ``max_tokens``, ``top_p``, ``top_k``, ``seed``,
        ``stop``, ``distill_config``, ``query``, ``chunks`` (retrieved passages
        as they appear in the prompt, best first) and ``model`` (only this
        model's own name). Any other keyword raises ``ValueError``.

    Which tokens are the query:
        The first of these that applies:

        1. ``query=`` passed to the call (``query=None`` turns the rules below off);
        2. the ``query`` field;
        3. the query stored by ``format_docs_for_promptdistill`` or
           ``PromptDistillRAGPrompt`` in the last human message;
        4. the last human message's text, stripped, when the messages before it
           are longer than it together (the retrieved context sits in an
           earlier message, as in LangChain's RAG tutorials, which put it in
           the system message);
        5. none: the engine scores with the last prompt token's attention and
           reports ``query_source="last_token"``.

    Streaming and async:
        ``stream`` yields the engine's text pieces as it decodes, one chunk per
        piece, then an empty chunk with ``usage_metadata`` and
        ``response_metadata``. Joined, the pieces equal ``invoke``'s text for
        a greedy call. ``ainvoke``, ``astream`` and ``abatch`` run every model
        step (tokenizing, the prefill, each token) in a worker thread, so the
        event loop stays free. An ``astream`` that is abandoned stops after the
        running step. Calls from many threads or tasks share one engine, which
        runs one forward pass at a time.

    Output:
        ``usage_metadata``: the prompt's tokens as input (all of them, including
        those the later layers dropped), the generated tokens as output.
        ``response_metadata``: ``model_name``, ``finish_reason`` and
        ``distill_stats`` (method, prompt_tokens, kept_tokens, selection_layers,
        query_source, KV cache size, prefill_seconds, decode_seconds, ...).

    Limitations:
        No tool calling, structured output or multimodal input; text only.
        One model per object: a per-call ``model`` other than its own raises.
        ``ainvoke`` and ``abatch`` finish the running model step when cancelled.

    Example:
        .. code-block:: python

            from promptdistill_rag import PromptDistillEngine
            from langchain_promptdistill import ChatPromptDistill

            engine = PromptDistillEngine.from_default()
            chat = ChatPromptDistill(engine=engine, max_tokens=64)
            chat.invoke("What is the capital of France?").content
    """

    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, protected_namespaces=()
    )

    @property
    def _llm_type(self) -> str:
        return "promptdistill-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.tracing_params("chat", stop, kwargs))

    # Tokens ----------------------------------------------------------------

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Return the tokens the model reads for ``messages``: chat template and generation prompt included.

        Raises:
            ValueError: If ``tools`` are given (the model has no tool calling) or a message has non-text content.
        """
        if tools:
            msg = "ChatPromptDistill has no tool calling, so tools cannot be counted"
            raise ValueError(msg)
        return len(self.count_prompt_tokens(to_chat_messages(messages, require_user_last=False)))

    # Request building ------------------------------------------------------

    def _resolve_query(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any], hinted: str | None) -> str | None:
        if "query" in kwargs:
            return kwargs["query"]
        if self.query is not None:
            return self.query
        if hinted is not None:
            return hinted
        last = messages[-1]
        if not is_user_message(last):
            return None
        question = message_text(last, len(messages) - 1).strip()
        if not question:
            return None
        # NOTE: "the earlier messages are longer" is a heuristic for "the context
        # sits before the question". When the question shares its message with
        # the context, that whole message would be the query and every context
        # token would be protected, so no query is used then.
        earlier = sum(len(message_text(message, index)) for index, message in enumerate(messages[:-1]))
        return question if earlier > len(question) else None

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        chat = to_chat_messages(messages)
        options = self.call_options(kwargs)
        hints = last_user_hints(messages)
        if options.chunks is None and hints.chunks is not None:
            options = options.model_copy(update={"chunks": hints.chunks})
        query = self._resolve_query(messages, kwargs, hints.query)
        return self.engine_arguments(chat, options, stop=stop, query=query)

    def _final_chunk(self, stats: DistillStats) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage_metadata(stats),
                response_metadata=response_metadata(self.resolved_model_name, stats),
                chunk_position="last",
            ),
            generation_info={"finish_reason": stats.finish_reason},
        )

    def _result(self, text: str, stats: DistillStats) -> ChatResult:
        message = AIMessage(
            content=text,
            usage_metadata=usage_metadata(stats),
            response_metadata=response_metadata(self.resolved_model_name, stats),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info={"finish_reason": stats.finish_reason})],
            llm_output={"model_name": self.resolved_model_name},
        )

    # Generation ------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        arguments = self._request(messages, stop, kwargs)
        result = self.get_engine().generate(**arguments)
        return self._result(result.text, result.stats)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        arguments = self._request(messages, stop, kwargs)
        stream = self.get_engine().stream(**arguments)
        try:
            for piece in stream:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                # LangChain's stream() and invoke() report tokens themselves and
                # pass no run manager; only the event-stream path passes one.
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            stream.close()
        chunk = self._final_chunk(stream.result.stats)
        if run_manager is not None:
            run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        arguments = self._request(messages, stop, kwargs)
        stream = await start_stream_in_thread(self, arguments)
        async for piece in pieces_in_thread(stream):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        chunk = self._final_chunk(stream.result.stats)
        if run_manager is not None:
            await run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        arguments = self._request(messages, stop, kwargs)
        stream = await start_stream_in_thread(self, arguments)
        pieces = [piece async for piece in pieces_in_thread(stream)]
        return self._result("".join(pieces), stream.result.stats)

