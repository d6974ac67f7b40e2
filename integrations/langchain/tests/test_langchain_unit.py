"""Fast tests of ChatPromptDistill, PromptDistillLLM and the RAG prompt helper on a tiny random-weight engine.

The tiny model generates gibberish, so these tests check plumbing: what
reaches the engine, what comes back, errors, streaming, async and callbacks.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.runnables import ConfigurableField, RunnableLambda, RunnablePassthrough
from pydantic import ValidationError

import langchain_promptdistill._common as common
import promptdistill_rag.shared as shared_cache
from langchain_promptdistill import (
    ChatPromptDistill,
    PromptDistillLLM,
    PromptDistillPromptValue,
    PromptDistillRAGPrompt,
    format_docs_for_promptdistill,
)
from promptdistill_rag import DistillConfig, FullConfig, PromptDistillEngine, TruncateConfig
from promptdistill_rag import testing as engine_testing
from promptdistill_rag.default_model import DEFAULT_MODEL_NAME

CONTEXT = (
    "Document [1]: The lighthouse on Skerry Point was built in 1871 by the harbour board.\n\n"
    "Document [2]: Its lamp burned paraffin until 1953, when it was converted to electricity.\n\n"
    "Document [3]: The keeper's cottage is now a small museum open on weekends."
)
QUESTION = "When was the lamp converted to electricity?"
# String prompts get no chat template, so they need about 30 tokens to leave
# the tiny engine's keep=0.5 budget above the 12 always-kept tokens.
LLM_PROMPT = f"{CONTEXT}\n\nQuestion: {QUESTION}\nAnswer:"


class TokenCollector(BaseCallbackHandler):
    """Records every ``on_llm_new_token`` call."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def chat(tiny_engine: PromptDistillEngine) -> ChatPromptDistill:
    return ChatPromptDistill(engine=tiny_engine, max_tokens=12)


@pytest.fixture
def llm(tiny_engine: PromptDistillEngine) -> PromptDistillLLM:
    return PromptDistillLLM(engine=tiny_engine, max_tokens=12)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any model load fail the test."""

    def fail(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a model was loaded")

    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(fail))
    monkeypatch.setattr(PromptDistillEngine, "from_default", classmethod(fail))


# Construction ----------------------------------------------------------------


def test_init_with_engine_loads_nothing(tiny_engine: PromptDistillEngine, no_loading: None) -> None:
    chat = ChatPromptDistill(engine=tiny_engine)
    llm = PromptDistillLLM(engine=tiny_engine)

    assert chat.get_engine() is tiny_engine
    assert llm.get_engine() is tiny_engine
    assert chat.resolved_model_name == tiny_engine.model_name


def test_init_with_model_name_loads_nothing(no_loading: None) -> None:
    chat = ChatPromptDistill(model_name="org/some-model", model_kwargs={"revision": "main"})
    default = ChatPromptDistill()

    assert chat.resolved_model_name == "org/some-model"
    assert default.resolved_model_name == DEFAULT_MODEL_NAME
    assert chat._get_ls_params()["ls_model_name"] == "org/some-model"


def test_init_model_alias(no_loading: None) -> None:
    chat = ChatPromptDistill(model="org/some-model")

    assert chat.model_name == "org/some-model"


@pytest.mark.parametrize(
    ("field", "hint"),
    [("timeout", None), ("max_new_tokens", "max_tokens"), ("config", "distill_config")],
)
def test_init_unknown_field_named(tiny_engine: PromptDistillEngine, field: str, hint: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        ChatPromptDistill(engine=tiny_engine, **{field: 1})

    assert repr(field) in str(info.value)
    if hint is not None:
        assert f"use {hint!r}" in str(info.value)


def test_llm_init_unknown_field_named(tiny_engine: PromptDistillEngine) -> None:
    with pytest.raises(ValidationError, match="'api_key'"):
        PromptDistillLLM(engine=tiny_engine, api_key="x")


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": -0.5},
        {"temperature": True},
        {"max_tokens": 0},
        {"max_tokens": "12"},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": 0},
        {"seed": 1.5},
        {"stop": [""]},
    ],
)
def test_init_invalid_setting(tiny_engine: PromptDistillEngine, settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        ChatPromptDistill(engine=tiny_engine, **settings)

    assert next(iter(settings)) in str(info.value)


def test_init_engine_with_model_kwargs(tiny_engine: PromptDistillEngine) -> None:
    with pytest.raises(ValidationError, match="model_kwargs"):
        ChatPromptDistill(engine=tiny_engine, model_kwargs={"dtype": "float32"})


@pytest.mark.parametrize(("key", "field"), [("config", "distill_config"), ("model_name", "model_name")])
def test_init_model_kwargs_taken_keys(key: str, field: str) -> None:
    with pytest.raises(ValidationError, match=f"set the {field!r} field"):
        ChatPromptDistill(model_name="org/some-model", model_kwargs={key: "x"})


def test_init_engine_with_other_model_name(tiny_engine: PromptDistillEngine) -> None:
    with pytest.raises(ValidationError, match="does not match"):
        ChatPromptDistill(engine=tiny_engine, model_name="org/other-model")


def test_init_distill_config_forms(tiny_engine: PromptDistillEngine) -> None:
    from_dict = ChatPromptDistill(engine=tiny_engine, distill_config={"method": "promptdistill", "keep": 0.5})
    from_json = ChatPromptDistill(engine=tiny_engine, distill_config='{"method": "full"}')
    from_object = ChatPromptDistill(engine=tiny_engine, distill_config=TruncateConfig(keep=64))

    assert from_dict.distill_config == DistillConfig(keep=0.5)
    assert from_json.distill_config == FullConfig()
    assert from_object.distill_config == TruncateConfig(keep=64)


def test_init_distill_config_invalid(tiny_engine: PromptDistillEngine) -> None:
    with pytest.raises(ValidationError):
        ChatPromptDistill(engine=tiny_engine, distill_config={"method": "no-such-method"})
    # The tiny model has 6 layers, so layer 10 is only caught against the engine.
    with pytest.raises(ValidationError, match="outside the model's layers"):
        ChatPromptDistill(engine=tiny_engine, distill_config=DistillConfig(selection_layers=[10]))


# Lazy loading ----------------------------------------------------------------


def test_lazy_load_once_and_shared(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[tuple[str, dict[str, Any]]] = []

    def fake_from_pretrained(cls: type, name: str, **kwargs: Any) -> PromptDistillEngine:
        loads.append((name, kwargs))
        return tiny_engine

    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(fake_from_pretrained))
    first = ChatPromptDistill(model_name="org/lazy-model", model_kwargs={"revision": "v1"}, max_tokens=4)
    second = PromptDistillLLM(model_name="org/lazy-model", model_kwargs={"revision": "v1"}, max_tokens=4)

    assert loads == []
    first.invoke("Hello there, how are you today?")
    second.invoke(LLM_PROMPT)

    assert loads == [("org/lazy-model", {"revision": "v1"})]
    assert first.get_engine() is second.get_engine()


def test_lazy_default_model(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[dict[str, Any]] = []

    def fake_from_default(cls: type, **kwargs: Any) -> PromptDistillEngine:
        loads.append(kwargs)
        return tiny_engine

    monkeypatch.setattr(PromptDistillEngine, "from_default", classmethod(fake_from_default))
    chat = ChatPromptDistill(model_kwargs={"attn_implementation": "eager"}, max_tokens=4)
    chat.invoke("Hello there, how are you today?")

    assert loads == [{"attn_implementation": "eager"}]


def test_configurable_fields_reuse_engine(tiny_engine: PromptDistillEngine, no_loading: None) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=4).configurable_fields(
        max_tokens=ConfigurableField(id="max_tokens"), query=ConfigurableField(id="query")
    )

    message = chat.invoke(
        [SystemMessage(CONTEXT), HumanMessage(QUESTION)],
        config={"configurable": {"max_tokens": 2, "query": QUESTION}},
    )

    assert message.usage_metadata["output_tokens"] <= 2
    assert message.response_metadata["distill_stats"]["query_source"] == "query"


def test_configurable_fields_reuse_lazy_engine(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []

    def fake_from_pretrained(cls: type, name: str, **kwargs: Any) -> PromptDistillEngine:
        loads.append(name)
        return tiny_engine

    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(fake_from_pretrained))
    base = ChatPromptDistill(model_name="org/configurable-model", max_tokens=4)
    chat = base.configurable_fields(temperature=ConfigurableField(id="temperature"))

    base.invoke("Hello there, how are you today?")
    for temperature in (0.0, 0.5):
        chat.invoke("Hello there, how are you today?", config={"configurable": {"temperature": temperature}})

    assert loads == ["org/configurable-model"]


# Messages --------------------------------------------------------------------


def test_message_roles(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    chat.invoke(
        [
            SystemMessage("Be brief."),
            HumanMessage("Hello", name="example_user"),
            AIMessage("Hi!"),
            ChatMessage(role="user", content=[{"type": "text", "text": "How "}, "are you?"]),
        ]
    )

    assert engine_calls[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "How are you?"},
    ]


def test_empty_messages_rejected(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="no messages"):
        chat.invoke([])

    assert chat.invoke("Hello there, how are you?").content is not None


def test_last_message_not_human_rejected(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="last message is a AIMessage"):
        chat.invoke([HumanMessage("Hello"), AIMessage("Hi!")])
    with pytest.raises(ValueError, match="last message is a SystemMessage"):
        chat.invoke([SystemMessage("Be brief.")])

    assert isinstance(chat.invoke("Hello there, how are you?"), AIMessage)


def test_tool_message_rejected(chat: ChatPromptDistill) -> None:
    messages = [HumanMessage("Add 1 and 2"), ToolMessage("3", tool_call_id="call-1"), HumanMessage("Thanks")]

    with pytest.raises(TypeError, match="ToolMessage"):
        chat.invoke(messages)


def test_tool_calls_rejected(chat: ChatPromptDistill) -> None:
    call = {"name": "add", "args": {"a": 1}, "id": "call-1", "type": "tool_call"}
    messages = [HumanMessage("Add"), AIMessage("", tool_calls=[call]), HumanMessage("Thanks")]

    with pytest.raises(ValueError, match="tool calls"):
        chat.invoke(messages)


def test_image_content_rejected(chat: ChatPromptDistill) -> None:
    image = {"type": "image", "url": "https://example.com/cat.png"}
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])

    with pytest.raises(ValueError, match="type 'image'"):
        chat.invoke([message])


def test_chat_role_unknown_rejected(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="role 'critic'"):
        chat.invoke([ChatMessage(role="critic", content="Hm."), HumanMessage("Hello")])


# Per-call keywords -------------------------------------------------------------


def test_unknown_keyword_named(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="unknown keyword argument 'foo'"):
        chat.invoke("Hello there", foo=1)
    with pytest.raises(ValueError, match="use 'max_tokens'"):
        list(chat.stream("Hello there", max_new_tokens=3))

    assert chat.invoke("Hello there, how are you?", max_tokens=3).usage_metadata["output_tokens"] <= 3


def test_llm_unknown_keyword_named(llm: PromptDistillLLM) -> None:
    with pytest.raises(ValueError, match="unknown keyword argument 'timeout'"):
        llm.invoke("Hello there", timeout=3)

    assert isinstance(llm.invoke(LLM_PROMPT), str)


def test_invalid_call_value(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValidationError, match="top_p"):
        chat.invoke("Hello there", top_p=2.0)


def test_call_keywords_reach_engine(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    chat.invoke(
        "Hello there, how are you?",
        temperature=0.7,
        max_tokens=5,
        top_p=0.9,
        top_k=20,
        seed=7,
        stop=["xyz"],
        distill_config={"method": "full"},
    )

    call = engine_calls[0]
    assert call["temperature"] == 0.7
    assert call["max_new_tokens"] == 5
    assert call["top_p"] == 0.9
    assert call["top_k"] == 20
    assert call["seed"] == 7
    assert call["stop"] == ["xyz"]
    assert call["config"] == FullConfig()


def test_fields_reach_engine(tiny_engine: PromptDistillEngine, engine_calls: list[dict[str, Any]]) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=3, stop=["abc"], seed=3, temperature=0.2)
    chat.invoke("Hello there, how are you?")

    call = engine_calls[0]
    assert call["max_new_tokens"] == 3
    assert call["stop"] == ["abc"]
    assert call["seed"] == 3
    assert call["temperature"] == 0.2
    assert call["config"] is None


def test_model_override_other_rejected(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="cannot switch to model 'org/other'"):
        chat.invoke("Hello there", model="org/other")

    assert isinstance(chat.invoke("Hello there, how are you?", model=chat.resolved_model_name), AIMessage)


# Query resolution --------------------------------------------------------------


def test_query_keyword_first(tiny_engine: PromptDistillEngine, engine_calls: list[dict[str, Any]]) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=2, query="Skerry Point")
    message = chat.invoke([SystemMessage(CONTEXT), HumanMessage(QUESTION)], query="paraffin")

    assert engine_calls[0]["query"] == "paraffin"
    assert message.response_metadata["distill_stats"]["query_source"] == "query"


def test_query_field_second(tiny_engine: PromptDistillEngine, engine_calls: list[dict[str, Any]]) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=2, query="Skerry Point")
    chat.invoke([SystemMessage(CONTEXT), HumanMessage(QUESTION)])

    assert engine_calls[0]["query"] == "Skerry Point"


def test_query_from_last_human_message(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    message = chat.invoke([SystemMessage(CONTEXT), HumanMessage(f"  {QUESTION}\n")])

    assert engine_calls[0]["query"] == QUESTION
    assert message.response_metadata["distill_stats"]["query_source"] == "query"


def test_query_none_when_context_in_question(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    message = chat.invoke([SystemMessage("Be brief."), HumanMessage(f"{CONTEXT}\n\nQuestion: {QUESTION}")])

    assert engine_calls[0]["query"] is None
    assert message.response_metadata["distill_stats"]["query_source"] == "last_token"


def test_query_none_for_single_message(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    chat.invoke(f"{CONTEXT}\n\nQuestion: {QUESTION}")

    assert engine_calls[0]["query"] is None


def test_query_keyword_none_disables_rules(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    chat.invoke([SystemMessage(CONTEXT), HumanMessage(QUESTION)], query=None)

    assert engine_calls[0]["query"] is None


def test_query_not_in_prompt(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="not found in the prompt"):
        chat.invoke([SystemMessage(CONTEXT), HumanMessage(QUESTION)], query="no such words")


# Generation, streaming and metadata ------------------------------------------------


def test_invoke_metadata(chat: ChatPromptDistill, tiny_engine: PromptDistillEngine) -> None:
    messages = [SystemMessage(CONTEXT), HumanMessage(QUESTION)]
    message = chat.invoke(messages)

    stats = message.response_metadata["distill_stats"]
    usage = message.usage_metadata
    assert message.response_metadata["model_name"] == tiny_engine.model_name
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert stats["method"] == "promptdistill"
    assert stats["prompt_tokens"] == chat.get_num_tokens_from_messages(messages)
    assert stats["kept_tokens"][-1] < stats["prompt_tokens"]
    assert stats["prefill_seconds"] > 0
    assert "decode_seconds" in stats
    assert "kept_indices" not in stats
    assert usage["input_tokens"] == stats["prompt_tokens"]
    assert usage["output_tokens"] == stats["generated_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_joins_to_invoke(chat: ChatPromptDistill) -> None:
    messages = [SystemMessage(CONTEXT), HumanMessage(QUESTION)]
    expected = chat.invoke(messages)
    chunks = list(chat.stream(messages))

    assert "".join(chunk.content for chunk in chunks) == expected.content
    assert len(chunks) >= 2
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == expected.usage_metadata
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])
    assert chunks[-1].response_metadata["model_name"] == expected.response_metadata["model_name"]


def test_stream_callbacks_per_chunk(chat: ChatPromptDistill) -> None:
    collector = TokenCollector()
    chunks = list(chat.stream("Hello there, how are you?", config={"callbacks": [collector]}))

    assert collector.tokens == [chunk.content for chunk in chunks]


def test_streaming_field_invoke_callbacks(tiny_engine: PromptDistillEngine) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=6, streaming=True)
    collector = TokenCollector()
    message = chat.invoke("Hello there, how are you?", config={"callbacks": [collector]})

    assert "".join(collector.tokens) == message.content
    assert len(collector.tokens) >= 2
    assert message.usage_metadata["output_tokens"] == message.response_metadata["distill_stats"]["generated_tokens"]


def test_stop_every_path(chat: ChatPromptDistill) -> None:
    messages = [SystemMessage(CONTEXT), HumanMessage(QUESTION)]
    full = chat.invoke(messages).content
    stop = full[3:7]
    expected = full[: full.find(stop)]

    streamed = "".join(chunk.content for chunk in chat.stream(messages, stop=[stop]))
    awaited = asyncio.run(chat.ainvoke(messages, stop=[stop])).content

    async def collect() -> str:
        return "".join([chunk.content async for chunk in chat.astream(messages, stop=[stop])])

    assert len(stop) == 4
    assert chat.invoke(messages, stop=[stop]).content == expected
    assert streamed == expected
    assert awaited == expected
    assert asyncio.run(collect()) == expected
    assert chat.batch([messages], stop=[stop])[0].content == expected


def test_stop_field(tiny_engine: PromptDistillEngine) -> None:
    messages = [SystemMessage(CONTEXT), HumanMessage(QUESTION)]
    full = ChatPromptDistill(engine=tiny_engine, max_tokens=12).invoke(messages).content
    stop = full[3:7]
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=12, stop=[stop])

    assert chat.invoke(messages).content == full[: full.find(stop)]
    assert chat.invoke(messages, stop=[]).content == full


def test_batch_shared_engine(chat: ChatPromptDistill) -> None:
    prompts = ["Hello there, how are you?", "Tell me about lighthouses, please.", f"{CONTEXT}\n\n{QUESTION}"]
    expected = [chat.invoke(prompt).content for prompt in prompts]

    assert [message.content for message in chat.batch(prompts)] == expected
    assert [message.content for message in chat.batch(prompts, config={"max_concurrency": 2})] == expected
    assert [message.content for message in asyncio.run(chat.abatch(prompts))] == expected


def test_ainvoke_keeps_loop_free(tiny_engine: PromptDistillEngine) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=40)

    async def run() -> tuple[float, float, int]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await chat.ainvoke(f"{CONTEXT}\n\n{QUESTION}")
        elapsed = time.perf_counter() - started
        done.set()
        await task
        return elapsed, max(gaps), len(gaps)

    elapsed, longest_gap, ticks = asyncio.run(run())

    assert ticks >= 5
    # A blocked loop would show one gap as long as the whole call.
    assert longest_gap < elapsed / 2


def test_astream_joins_to_invoke(chat: ChatPromptDistill) -> None:
    messages = [SystemMessage(CONTEXT), HumanMessage(QUESTION)]
    expected = chat.invoke(messages)
    collector = TokenCollector()

    async def collect() -> list[AIMessageChunk]:
        return [chunk async for chunk in chat.astream(messages, config={"callbacks": [collector]})]

    chunks = asyncio.run(collect())

    assert "".join(chunk.content for chunk in chunks) == expected.content
    assert chunks[-1].usage_metadata == expected.usage_metadata
    assert collector.tokens == [chunk.content for chunk in chunks]


class CountingStream:
    """Wraps an engine stream and records how many pieces it produced and whether it was closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pieces = 0
        self.closed = False

    def __iter__(self) -> CountingStream:
        return self

    def __next__(self) -> str:
        piece = next(self.inner)
        self.pieces += 1
        return piece

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    @property
    def result(self) -> Any:
        return self.inner.result


@pytest.fixture
def counted_streams(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> list[CountingStream]:
    streams: list[CountingStream] = []
    original = tiny_engine.stream

    def counting_stream(prompt: Any, **kwargs: Any) -> CountingStream:
        stream = CountingStream(original(prompt, **kwargs))
        streams.append(stream)
        return stream

    monkeypatch.setattr(tiny_engine, "stream", counting_stream)
    return streams


def test_astream_early_stop_closes(chat: ChatPromptDistill, counted_streams: list[CountingStream]) -> None:
    async def first_chunk() -> str:
        async for chunk in chat.astream("Hello there, how are you?", max_tokens=60):
            return chunk.content
        return ""

    asyncio.run(first_chunk())

    assert counted_streams[0].closed
    assert counted_streams[0].pieces <= 2
    assert chat.invoke("Hello there, how are you?", max_tokens=2).usage_metadata["output_tokens"] <= 2


def test_ainvoke_cancel_stops_generation(chat: ChatPromptDistill, counted_streams: list[CountingStream]) -> None:
    async def cancel_after_two_pieces() -> None:
        task = asyncio.create_task(chat.ainvoke("Hello there, how are you?", max_tokens=200))
        while not counted_streams or counted_streams[0].pieces < 2:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The step that was running when the task was cancelled finishes in its thread.
        for _ in range(500):
            if counted_streams[0].closed:
                break
            await asyncio.sleep(0.01)

    asyncio.run(cancel_after_two_pieces())

    assert counted_streams[0].closed
    assert counted_streams[0].pieces < 200


def test_cancel_before_step_starts_closes() -> None:
    stream = CountingStream(iter(["first", "second"]))

    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        gate = threading.Event()
        # The only worker waits on the gate, so the stream's first step stays queued.
        blocker = loop.run_in_executor(None, gate.wait)
        pieces = common.pieces_in_thread(stream)
        task = asyncio.create_task(pieces.__anext__())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closed_while_queued = stream.closed
        gate.set()
        await blocker
        for _ in range(200):
            if stream.closed:
                break
            await asyncio.sleep(0.01)
        return closed_while_queued, stream.closed

    closed_while_queued, closed_after_step = asyncio.run(scenario())

    assert not closed_while_queued
    assert closed_after_step
    assert stream.pieces == 1


def test_identifying_and_tracing_params(tiny_engine: PromptDistillEngine) -> None:
    chat = ChatPromptDistill(engine=tiny_engine, max_tokens=7, temperature=0.3, stop=["x"], distill_config=FullConfig())

    ls = chat._get_ls_params()
    assert ls["ls_provider"] == "promptdistill"
    assert ls["ls_model_name"] == tiny_engine.model_name
    assert ls["ls_model_type"] == "chat"
    assert ls["ls_temperature"] == 0.3
    assert ls["ls_max_tokens"] == 7
    assert ls["ls_stop"] == ["x"]
    assert chat._get_ls_params(model="org/override")["ls_model_name"] == "org/override"
    assert chat._llm_type == "promptdistill-chat"
    assert chat._identifying_params["distill_config"] == {"method": "full"}
    assert chat._identifying_params["max_tokens"] == 7


def test_num_tokens(chat: ChatPromptDistill, llm: PromptDistillLLM, tiny_engine: PromptDistillEngine) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Hello"), AIMessage("Hi!")]
    expected = tiny_engine.count_tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]
    )

    assert chat.get_num_tokens_from_messages(messages) == expected
    assert llm.get_num_tokens("Hello there") == tiny_engine.count_tokens("Hello there")
    assert chat.get_num_tokens("") == 0
    assert ChatPromptDistill(engine=tiny_engine, custom_get_token_ids=lambda text: [7, 8, 9]).get_num_tokens("Hi") == 3
    with pytest.raises(ValueError, match="tool calling"):
        chat.get_num_tokens_from_messages(messages, tools=[{"name": "add"}])


def test_prompt_over_position_limit(chat: ChatPromptDistill, tiny_engine: PromptDistillEngine) -> None:
    long_text = "The harbour board met every Tuesday. " * 400

    assert tiny_engine.count_tokens(long_text) > tiny_engine.max_positions
    with pytest.raises(ValueError, match="positions"):
        chat.invoke(long_text)
    assert isinstance(chat.invoke("Hello there, how are you?"), AIMessage)


# LLM ---------------------------------------------------------------------------


def test_llm_invoke_and_stream(llm: PromptDistillLLM) -> None:
    text = llm.invoke(LLM_PROMPT)
    collector = TokenCollector()
    pieces = list(llm.stream(LLM_PROMPT, config={"callbacks": [collector]}))

    assert isinstance(text, str)
    assert "".join(pieces) == text
    assert collector.tokens == pieces


def test_llm_generate_metadata(llm: PromptDistillLLM, tiny_engine: PromptDistillEngine) -> None:
    prompts = [LLM_PROMPT, f"{CONTEXT}\n\nWho built the lighthouse?"]
    result = llm.generate(prompts)

    info = result.generations[0][0].generation_info
    assert info["distill_stats"]["prompt_tokens"] == tiny_engine.count_tokens(prompts[0])
    assert info["usage_metadata"]["output_tokens"] == info["distill_stats"]["generated_tokens"]
    assert result.llm_output["model_name"] == tiny_engine.model_name
    assert result.llm_output["token_usage"]["input_tokens"] == sum(
        generation[0].generation_info["usage_metadata"]["input_tokens"] for generation in result.generations
    )
    assert llm._get_ls_params()["ls_model_type"] == "llm"
    assert llm._llm_type == "promptdistill"


def test_llm_async_matches_sync(llm: PromptDistillLLM) -> None:
    prompt = LLM_PROMPT
    expected = llm.invoke(prompt)

    async def run() -> tuple[str, str, list[str]]:
        awaited = await llm.ainvoke(prompt)
        streamed = "".join([piece async for piece in llm.astream(prompt)])
        batched = await llm.abatch([prompt, prompt])
        return awaited, streamed, batched

    awaited, streamed, batched = asyncio.run(run())

    assert awaited == expected
    assert streamed == expected
    assert batched == [expected, expected]
    assert llm.batch([prompt, prompt]) == [expected, expected]


def test_llm_stop_every_path(llm: PromptDistillLLM) -> None:
    full = llm.invoke(LLM_PROMPT)
    stop = full[3:7]
    expected = full[: full.find(stop)]

    async def collect() -> tuple[str, str]:
        awaited = await llm.ainvoke(LLM_PROMPT, stop=[stop])
        streamed = "".join([piece async for piece in llm.astream(LLM_PROMPT, stop=[stop])])
        return awaited, streamed

    awaited, async_streamed = asyncio.run(collect())

    assert len(stop) == 4
    assert llm.invoke(LLM_PROMPT, stop=[stop]) == expected
    assert "".join(llm.stream(LLM_PROMPT, stop=[stop])) == expected
    assert awaited == expected
    assert async_streamed == expected


def test_llm_streaming_field_callbacks(tiny_engine: PromptDistillEngine) -> None:
    llm = PromptDistillLLM(engine=tiny_engine, max_tokens=6, streaming=True)
    collector = TokenCollector()
    text = llm.invoke(LLM_PROMPT, config={"callbacks": [collector]})

    assert "".join(collector.tokens) == text
    assert len(collector.tokens) >= 2


# RAG prompt helper ---------------------------------------------------------------


DOCS = [
    Document("The lighthouse on Skerry Point was built in 1871.", metadata={"title": "History"}),
    Document("Its lamp burned paraffin until 1953.\n\nThen it was converted to electricity."),
    Document("The keeper's cottage is now a small museum."),
]


def test_format_docs_prompt_value() -> None:
    prompt = format_docs_for_promptdistill(DOCS, "  When was the lamp converted? ")

    human = prompt.to_messages()[-1]
    assert isinstance(prompt, ChatPromptValue)
    assert prompt.query == "When was the lamp converted?"
    assert prompt.chunks[0] == "Document [1] (History): The lighthouse on Skerry Point was built in 1871."
    assert prompt.chunks[1] == "Document [2]: Its lamp burned paraffin until 1953.\nThen it was converted to electricity."
    assert len(prompt.chunks) == 3
    assert isinstance(human, HumanMessage)
    assert human.additional_kwargs["promptdistill"] == {"query": prompt.query, "chunks": prompt.chunks}
    assert prompt.to_string() == human.content
    assert human.content.endswith("Question: When was the lamp converted?")


def test_format_docs_system_and_strings() -> None:
    prompt = format_docs_for_promptdistill(["First passage.", "Second passage."], "Which?", system="Be brief.", title_key=None)

    assert [type(message) for message in prompt.to_messages()] == [SystemMessage, HumanMessage]
    assert prompt.to_string().startswith("Be brief.\n\n")
    assert prompt.chunks == ["Document [1]: First passage.", "Document [2]: Second passage."]


def test_format_docs_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="list of Documents"):
        format_docs_for_promptdistill("one string", "Which?")
    with pytest.raises(TypeError, match="document 1"):
        format_docs_for_promptdistill([DOCS[0], 42], "Which?")
    with pytest.raises(ValueError, match="question"):
        format_docs_for_promptdistill(DOCS, "  ")


def test_rag_prompt_runnable_errors() -> None:
    step = PromptDistillRAGPrompt()

    with pytest.raises(ValueError, match="missing"):
        step.invoke({"question": "Which?"})
    with pytest.raises(TypeError, match="unformatted"):
        step.invoke({"context": "Document [1]: text", "question": "Which?"})
    with pytest.raises(ValidationError):
        PromptDistillRAGPrompt(instructions="typo")


def test_rag_chain_passes_hints(chat: ChatPromptDistill, engine_calls: list[dict[str, Any]]) -> None:
    retriever = RunnableLambda(lambda question: DOCS)
    chain = {"context": retriever, "question": RunnablePassthrough()} | PromptDistillRAGPrompt() | chat | StrOutputParser()
    expected = format_docs_for_promptdistill(DOCS, "When was the lamp converted?")

    answer = chain.invoke("When was the lamp converted?")

    assert isinstance(answer, str)
    assert engine_calls[0]["query"] == expected.query
    assert engine_calls[0]["chunks"] == expected.chunks
    assert engine_calls[0]["prompt"][-1]["content"] == expected.to_messages()[-1].content


def test_rag_chain_chunk_granularity(chat: ChatPromptDistill) -> None:
    prompt = format_docs_for_promptdistill(DOCS, "When was the lamp converted?")
    config = DistillConfig(keep=0.5, granularity="chunk", min_keep=1)

    message = chat.invoke(prompt, distill_config=config)

    assert message.response_metadata["distill_stats"]["query_source"] == "query"


def test_llm_reads_prompt_value_hints(llm: PromptDistillLLM, engine_calls: list[dict[str, Any]]) -> None:
    prompt = format_docs_for_promptdistill(DOCS, "When was the lamp converted?")

    other = format_docs_for_promptdistill(DOCS[:2], "Who built it?")

    llm.invoke(prompt)
    list(llm.stream(prompt))
    llm.batch([prompt, other])
    llm.generate_prompt([other])
    asyncio.run(llm.ainvoke(prompt))

    assert engine_calls[0]["prompt"] == prompt.to_string()
    assert engine_calls[0]["query"] == prompt.query
    assert engine_calls[0]["chunks"] == prompt.chunks
    assert engine_calls[1]["query"] == prompt.query
    assert [call["query"] for call in engine_calls[2:4]] == [prompt.query, other.query]
    assert engine_calls[3]["chunks"] == other.chunks
    assert engine_calls[4]["query"] == other.query
    assert engine_calls[5]["query"] == prompt.query


def test_llm_explicit_query_beats_hints(llm: PromptDistillLLM, engine_calls: list[dict[str, Any]]) -> None:
    prompt = format_docs_for_promptdistill(DOCS, "When was the lamp converted?")

    llm.invoke(prompt, query="Skerry Point")

    assert engine_calls[0]["query"] == "Skerry Point"
    assert engine_calls[0]["chunks"] == prompt.chunks


def test_malformed_hints_rejected(chat: ChatPromptDistill) -> None:
    message = HumanMessage("Question?", additional_kwargs={"promptdistill": {"query": 3}})

    with pytest.raises(ValueError, match="'query'\\] must be a string"):
        chat.invoke([message])


def test_prompt_value_type() -> None:
    assert issubclass(PromptDistillPromptValue, ChatPromptValue)
    assert not PromptDistillPromptValue.is_lc_serializable()


def test_engine_cache_is_weak(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_from_pretrained(cls: type, name: str, **kwargs: Any) -> PromptDistillEngine:
        return engine_testing.tiny_engine("llama", config=DistillConfig(keep=0.5))

    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(fake_from_pretrained))
    chat = ChatPromptDistill(model_name="org/short-lived-model")
    chat.get_engine()
    cached = [key for key in shared_cache._ENGINES if "org/short-lived-model" in key]

    del chat
    gc.collect()

    assert len(cached) == 1
    assert cached[0] not in shared_cache._ENGINES
