"""Fast tests of PromptDistillLLM on a tiny random-weight engine: no real model, no downloads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref

import pytest
from llama_index.core import Settings, SummaryIndex, get_response_synthesizer
from llama_index.core.base.llms.types import ImageBlock, TextBlock
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler, TokenCountingHandler
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import TextNode

from llama_index.llms.promptdistill import CALL_KEYWORDS, PromptDistillLLM, base
from promptdistill_rag import DistillConfig, FullConfig, PromptDistillEngine
from promptdistill_rag import testing as engine_testing
import promptdistill_rag.shared as shared_cache

# About 120 tokens: long enough that keep=0.5 stays above the always-kept tokens plus a query.
CONTEXT = (
    "The lighthouse on Gull Point was built in 1871 from granite quarried on the island. "
    "Its first keeper, Martha Quill, kept a log of every ship that passed for thirty years. "
    "The lamp burned whale oil until 1902, then kerosene, and finally electricity after 1931. "
    "Visitors may climb the 112 steps to the gallery on summer weekends."
)
QUESTION = "Who was the first keeper of the lighthouse?"
QA_TEMPLATE = PromptTemplate("Read the text and answer.\n\n{context_str}\n\nQuestion: {query_str}\nAnswer:")


@pytest.fixture(autouse=True)
def empty_engine_cache(monkeypatch):
    """Give each test its own cache of lazily loaded engines."""
    monkeypatch.setattr(shared_cache, "_ENGINES", weakref.WeakValueDictionary())


@pytest.fixture
def llm(tiny_engine: PromptDistillEngine) -> PromptDistillLLM:
    return PromptDistillLLM(engine=tiny_engine, max_new_tokens=6)


def user_messages(text: str = f"{CONTEXT}\n\nQuestion: {QUESTION}") -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=text)]


# Construction and loading ---------------------------------------------------


def test_engine_given_loads_nothing(tiny_engine, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no model may load when an engine is given")

    monkeypatch.setattr(PromptDistillEngine, "from_default", fail)
    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", fail)
    llm = PromptDistillLLM(engine=tiny_engine)
    assert llm.engine_loaded
    assert llm.engine is tiny_engine
    assert llm.metadata.context_window == tiny_engine.max_positions


def test_default_model_loads_on_first_use(tiny_engine, monkeypatch):
    loads = []

    def fake_from_default(**kwargs):
        loads.append(kwargs)
        return tiny_engine

    monkeypatch.setattr(PromptDistillEngine, "from_default", fake_from_default)
    llm = PromptDistillLLM(model_kwargs={"attn_implementation": "sdpa"}, max_new_tokens=4)
    assert loads == []
    assert not llm.engine_loaded
    payload = llm.to_payload()
    assert payload["model_name"] == "SmolLM2-135M-Instruct"
    assert loads == []

    llm.complete(CONTEXT)
    llm.complete(CONTEXT)
    assert loads == [{"attn_implementation": "sdpa"}]
    assert llm.engine_loaded


def test_lazy_llms_share_one_engine(tiny_engine, monkeypatch):
    loads = []

    def fake_from_default(**kwargs):
        loads.append(kwargs)
        return engine_testing.tiny_engine("llama", config=tiny_engine.config, seed=2)

    monkeypatch.setattr(PromptDistillEngine, "from_default", fake_from_default)
    distilled = PromptDistillLLM(max_new_tokens=3)
    plain = PromptDistillLLM(max_new_tokens=3, distill_config=FullConfig())
    other_kwargs = PromptDistillLLM(max_new_tokens=3, model_kwargs={"attn_implementation": "eager"})
    assert distilled.engine is plain.engine
    assert other_kwargs.engine is not distilled.engine
    assert loads == [{}, {"attn_implementation": "eager"}]


def test_model_path_loads_on_first_use(tmp_path):
    model = engine_testing.tiny_model("qwen3", seed=1)
    model.save_pretrained(tmp_path)
    engine_testing.default_tokenizer().save_pretrained(tmp_path)

    llm = PromptDistillLLM(model_name=str(tmp_path), distill_config=FullConfig(), max_new_tokens=3)
    assert not llm.engine_loaded
    response = llm.complete(CONTEXT)
    assert llm.engine_loaded
    assert llm.metadata.model_name == str(tmp_path)
    assert response.raw["stats"]["generated_tokens"] <= 3


def test_metadata_reports_model_limits(tiny_engine):
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=100)
    metadata = llm.metadata
    assert metadata.context_window == 2048
    assert metadata.num_output == 100
    assert metadata.model_name == tiny_engine.model_name
    assert metadata.is_chat_model is True
    assert metadata.is_function_calling_model is False


def test_is_chat_model_override(tiny_engine):
    llm = PromptDistillLLM(engine=tiny_engine, is_chat_model=False)
    assert llm.metadata.is_chat_model is False


def test_num_output_too_large_with_engine(tiny_engine):
    with pytest.raises(ValueError, match="max_new_tokens") as excinfo:
        PromptDistillLLM(engine=tiny_engine, max_new_tokens=2048)
    assert "2048 positions" in str(excinfo.value)
    assert "is 2048" in str(excinfo.value)


def test_num_output_too_large_when_loaded_lazily(tiny_engine, monkeypatch):
    loads = []

    def fake_from_default(**kwargs):
        loads.append(kwargs)
        return tiny_engine

    monkeypatch.setattr(PromptDistillEngine, "from_default", fake_from_default)
    llm = PromptDistillLLM(max_new_tokens=5000)
    with pytest.raises(ValueError, match="5000") as excinfo:
        llm.complete(CONTEXT)
    assert "2048" in str(excinfo.value)
    with pytest.raises(ValueError, match="5000"):
        llm.metadata

    llm.max_new_tokens = 4
    assert llm.complete(CONTEXT).raw["stats"]["generated_tokens"] <= 4
    assert len(loads) == 1


def test_unknown_field_is_named(tiny_engine):
    with pytest.raises(ValueError, match="'colour'"):
        PromptDistillLLM(engine=tiny_engine, colour="blue")


@pytest.mark.parametrize(
    ("field", "hint"),
    [("config", "distill_config"), ("max_tokens", "max_new_tokens"), ("context_window", "position limit")],
)
def test_renamed_field_gets_hint(tiny_engine, field, hint):
    with pytest.raises(ValueError, match=hint):
        PromptDistillLLM(engine=tiny_engine, **{field: 1})


def test_engine_and_model_name_conflict(tiny_engine):
    with pytest.raises(ValueError, match="either engine or model_name"):
        PromptDistillLLM(engine=tiny_engine, model_name="HuggingFaceTB/SmolLM2-135M-Instruct")


def test_engine_of_wrong_type():
    with pytest.raises(TypeError, match="PromptDistillEngine"):
        PromptDistillLLM(engine="not an engine")


def test_distill_config_from_dict(tiny_engine):
    llm = PromptDistillLLM(engine=tiny_engine, distill_config={"method": "full"})
    assert llm.distill_config == FullConfig()


def test_distill_config_unknown_method(tiny_engine):
    with pytest.raises(ValueError, match="promptdistill"):
        PromptDistillLLM(engine=tiny_engine, distill_config={"method": "magic"})


def test_distill_config_layer_past_model_depth(tiny_engine):
    with pytest.raises(ValueError, match="outside the model's layers"):
        PromptDistillLLM(engine=tiny_engine, distill_config=DistillConfig(selection_layers=[40]))


def test_distill_config_checked_when_loaded_lazily(tiny_engine, monkeypatch):
    monkeypatch.setattr(PromptDistillEngine, "from_default", lambda **kwargs: tiny_engine)
    llm = PromptDistillLLM(distill_config=DistillConfig(selection_layers=[40]))
    assert not llm.engine_loaded
    with pytest.raises(ValueError, match="outside the model's layers"):
        llm.complete(CONTEXT)


def test_serialization_round_trip(llm):
    data = llm.to_dict()
    assert data["class_name"] == "PromptDistillLLM"
    restored = PromptDistillLLM.from_dict({**data, "distill_config": {"method": "full"}})
    assert restored.distill_config == FullConfig()
    assert restored.max_new_tokens == 6
    assert not restored.engine_loaded


# Bad input -----------------------------------------------------------------


def test_unknown_keyword_is_named_and_llm_stays_usable(llm, engine_calls):
    with pytest.raises(ValueError, match="'temprature'"):
        llm.complete(CONTEXT, temprature=0.5)
    with pytest.raises(ValueError, match="'tools'"):
        llm.chat(user_messages(), tools=[])
    with pytest.raises(ValueError, match="'max_tokens' \\(use 'max_new_tokens'\\)"):
        llm.stream_complete(CONTEXT, max_tokens=3)
    with pytest.raises(ValueError, match="'foo'"):
        asyncio.run(llm.acomplete(CONTEXT, foo=1))
    assert engine_calls == []
    assert llm.complete(CONTEXT).raw["stats"]["prompt_tokens"] > 0


def test_accepted_keywords_reach_engine(llm, engine_calls):
    llm.complete(CONTEXT, max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=["\n\n"])
    call = engine_calls[0]
    assert (call["max_new_tokens"], call["temperature"], call["top_p"]) == (2, 0.7, 0.9)
    assert (call["top_k"], call["seed"], call["stop"]) == (5, 3, ["\n\n"])
    assert set(CALL_KEYWORDS) == {"query", "chunks", "distill_config", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"}


def test_empty_prompt_raises_and_llm_stays_usable(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.complete("")
    with pytest.raises(ValueError, match="empty"):
        llm.chat([])
    with pytest.raises(ValueError, match="empty"):
        llm.complete("   ", formatted=True)
    assert llm.complete(CONTEXT).text is not None


def test_prompt_over_limit_raises_before_streaming(llm, engine_calls):
    long_prompt = "lighthouse " * 2100
    with pytest.raises(ValueError, match="2048 positions"):
        llm.complete(long_prompt)
    # The stream call itself raises, before anyone iterates.
    with pytest.raises(ValueError, match="2048 positions"):
        llm.stream_complete(long_prompt)
    with pytest.raises(ValueError, match="2048 positions"):
        asyncio.run(llm.astream_chat(user_messages(long_prompt)))
    response = llm.complete(CONTEXT)
    assert response.raw["stats"]["prompt_tokens"] < 2048


def test_tool_role_rejected(llm):
    messages = [*user_messages(), ChatMessage(role=MessageRole.TOOL, content="42")]
    with pytest.raises(ValueError, match="role 'tool'"):
        llm.chat(messages)


def test_image_block_rejected(llm):
    message = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text=CONTEXT), ImageBlock(url="http://127.0.0.1/x.png")])
    with pytest.raises(ValueError, match="ImageBlock"):
        llm.chat([message])


def test_query_not_in_prompt_raises(llm):
    with pytest.raises(ValueError, match="not found"):
        llm.complete(CONTEXT, query="Where is the moon?")


# Prompt formatting ----------------------------------------------------------


def test_complete_and_stream_complete_format_alike(tiny_engine, engine_calls):
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=6, system_prompt="Answer briefly.")
    response = llm.complete(CONTEXT)
    pieces = list(llm.stream_complete(CONTEXT))
    first, second = engine_calls
    assert first["prompt"] == second["prompt"]
    assert first["prompt"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": CONTEXT},
    ]
    assert {k: v for k, v in first.items() if k not in ("thread", "step_threads", "closed")} == {
        k: v for k, v in second.items() if k not in ("thread", "step_threads", "closed")
    }
    assert "".join(piece.delta for piece in pieces) == response.text
    assert pieces[-1].text == response.text


def test_formatted_prompt_sent_as_is(llm, engine_calls):
    llm.complete(CONTEXT, formatted=True)
    list(llm.stream_complete(CONTEXT, formatted=True))
    assert [call["prompt"] for call in engine_calls] == [CONTEXT, CONTEXT]


def test_completion_to_prompt_formats_bare_prompt(tiny_engine, engine_calls):
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=4, completion_to_prompt=lambda p: f"### Input\n{p}\n### Output\n")
    llm.complete(CONTEXT)
    list(llm.stream_complete(CONTEXT))
    expected = f"### Input\n{CONTEXT}\n### Output\n"
    assert [call["prompt"] for call in engine_calls] == [expected, expected]


def test_chat_roles_mapped_for_template(llm, engine_calls):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content=CONTEXT),
        ChatMessage(role=MessageRole.CHATBOT, content="Noted."),
        ChatMessage(role=MessageRole.USER, content=QUESTION),
    ]
    llm.chat(messages)
    assert engine_calls[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": CONTEXT},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": QUESTION},
    ]


def test_messages_to_prompt_used_when_given(tiny_engine, engine_calls):
    def render(messages):
        return "\n".join(f"{m.role.value}: {m.content}" for m in messages) + "\nassistant:"

    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=4, messages_to_prompt=render)
    llm.chat(user_messages())
    assert engine_calls[0]["prompt"] == render(user_messages())


# Responses and stats ---------------------------------------------------------


def test_complete_response_carries_stats(llm):
    response = llm.complete(CONTEXT)
    stats = response.raw["stats"]
    assert stats["method"] == "promptdistill"
    assert stats["query_source"] == "last_token"
    assert response.raw["text"] == response.text
    assert response.raw["usage"]["prompt_tokens"] == stats["prompt_tokens"]
    assert response.additional_kwargs["completion_tokens"] == stats["generated_tokens"]
    assert response.additional_kwargs["distill_stats"]["kept_tokens"] == stats["kept_tokens"]
    assert "kept_indices" not in response.additional_kwargs["distill_stats"]


def test_chat_response_carries_stats(llm):
    response = llm.chat(user_messages())
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == response.raw["text"]
    assert response.additional_kwargs["distill_stats"]["method"] == "promptdistill"


def test_stream_chat_deltas_and_final_stats(llm):
    chunks = list(llm.stream_chat(user_messages()))
    assert all(chunk.raw is None for chunk in chunks[:-1])
    final = chunks[-1]
    assert final.delta == ""
    assert final.message.content == "".join(chunk.delta for chunk in chunks)
    assert final.raw["stats"]["generated_tokens"] <= 6
    text = ""
    for chunk in chunks:
        text += chunk.delta
        assert chunk.message.content == text


def test_per_call_distill_config(llm, engine_calls):
    response = llm.complete(CONTEXT, distill_config={"method": "full"}, max_new_tokens=2)
    assert engine_calls[0]["config"] == {"method": "full"}
    assert response.raw["stats"]["method"] == "full"
    assert response.raw["stats"]["generated_tokens"] <= 2


def test_two_llms_share_one_engine(tiny_engine, engine_calls):
    distilled = PromptDistillLLM(engine=tiny_engine, max_new_tokens=3)
    plain = PromptDistillLLM(engine=tiny_engine, max_new_tokens=3, distill_config=FullConfig())
    assert distilled.complete(CONTEXT).raw["stats"]["method"] == "promptdistill"
    assert plain.complete(CONTEXT).raw["stats"]["method"] == "full"
    assert [call["config"] for call in engine_calls] == [None, FullConfig()]


def test_stream_closed_early_frees_engine(llm, engine_calls):
    stream = llm.stream_complete(CONTEXT, max_new_tokens=50)
    next(stream)
    stream.close()
    assert engine_calls[0]["closed"]
    assert llm.complete(CONTEXT).raw["stats"]["prompt_tokens"] > 0


def test_async_stream_closed_early_frees_engine(llm, engine_calls):
    async def read_one():
        stream = await llm.astream_complete(CONTEXT, max_new_tokens=50)
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(read_one())
    assert engine_calls[0]["closed"]
    assert llm.complete(CONTEXT).raw["stats"]["prompt_tokens"] > 0


# Query capture ----------------------------------------------------------------


def test_predict_uses_template_query(llm, engine_calls):
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    assert engine_calls[0]["query"] == QUESTION


def test_predict_passes_context_passages_as_chunks(llm, engine_calls):
    passages = ["The lamp first burned whale oil.", "Later keepers switched to kerosene.\nIt was cheaper."]
    llm.predict(QA_TEMPLATE, context_str="\n\n".join(passages), query_str=QUESTION)
    assert engine_calls[0]["chunks"] == passages


def test_explicit_chunks_win_over_context(llm, engine_calls):
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    llm.complete(CONTEXT, chunks=None)
    assert engine_calls[1]["chunks"] is None


def test_predict_query_drives_selection(llm, llm_events):
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    (end,) = [event for event in llm_events if isinstance(event, LLMChatEndEvent)]
    assert end.response.raw["stats"]["query_source"] == "query"


def test_stream_uses_template_query(llm, engine_calls):
    tokens = list(llm.stream(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION))
    assert engine_calls[0]["query"] == QUESTION
    assert len(tokens) >= 1


def test_apredict_and_astream_use_template_query(llm, engine_calls):
    async def run():
        await llm.apredict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
        tokens = await llm.astream(QA_TEMPLATE, context_str=CONTEXT, query_str="Which fuel did the lamp burn first?")
        return [token async for token in tokens]

    asyncio.run(run())
    assert [call["query"] for call in engine_calls] == [QUESTION, "Which fuel did the lamp burn first?"]


def test_completion_path_uses_template_query(tiny_engine, engine_calls):
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=4, is_chat_model=False)
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    assert engine_calls[0]["query"] == QUESTION
    assert isinstance(engine_calls[0]["prompt"], str)


def test_partially_formatted_query_is_used(llm, engine_calls):
    template = QA_TEMPLATE.partial_format(query_str=QUESTION)
    llm.predict(template, context_str=CONTEXT)
    assert engine_calls[0]["query"] == QUESTION


def test_query_scope_ends_with_the_call(llm, engine_calls):
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    llm.complete(f"{CONTEXT}\n\nQuestion: {QUESTION}")
    assert [call["query"] for call in engine_calls] == [QUESTION, None]


def test_template_without_query_falls_back_to_last_token(llm, engine_calls, caplog, monkeypatch):
    monkeypatch.setattr(base, "_warned", set())
    template = PromptTemplate("Summarise the text.\n\n{context_str}\nSummary:")
    with caplog.at_level(logging.WARNING, logger=base.__name__):
        llm.predict(template, context_str=CONTEXT, query_str="Something not in the prompt")
    assert engine_calls[0]["query"] is None
    assert "query_str does not appear in the prompt" in caplog.text


def test_chat_uses_last_user_message_after_longer_context(llm, engine_calls):
    context_first = [
        ChatMessage(role=MessageRole.SYSTEM, content=f"Answer from this text.\n\n{CONTEXT}"),
        ChatMessage(role=MessageRole.USER, content=f"  {QUESTION}\n"),
    ]
    lone_question = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
    short_system = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content=QUESTION),
    ]
    ends_with_assistant = [*context_first, ChatMessage(role=MessageRole.ASSISTANT, content="Martha")]
    for messages in (context_first, lone_question, short_system, ends_with_assistant):
        llm.chat(messages)
    assert [call["query"] for call in engine_calls] == [QUESTION, None, None, None]


def test_template_query_wins_over_last_user_message(llm, engine_calls):
    llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=QUESTION)
    assert engine_calls[0]["query"] == QUESTION


def test_explicit_query_wins_over_template(llm, engine_calls):
    prompt = f"{CONTEXT}\n\nQuestion: {QUESTION}"
    llm.complete(prompt, query=QUESTION)
    llm.chat(user_messages(), query="Martha Quill")
    llm.chat(user_messages(), query=None)
    assert [call["query"] for call in engine_calls] == [QUESTION, "Martha Quill", None]


def test_explicit_query_drives_selection(llm):
    response = llm.complete(f"{CONTEXT}\n\nQuestion: {QUESTION}", query=QUESTION)
    assert response.raw["stats"]["query_source"] == "query"


def test_concurrent_predicts_keep_queries_apart(llm, engine_calls):
    questions = [f"Question number {i}: what did keeper {i} log?" for i in range(4)]
    barrier = threading.Barrier(len(questions))
    seen = {}

    def ask(question: str) -> None:
        barrier.wait()
        llm.predict(QA_TEMPLATE, context_str=CONTEXT, query_str=question)
        seen[threading.get_ident()] = question

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(call["query"] for call in engine_calls) == sorted(questions)
    for call in engine_calls:
        assert seen[call["thread"]] == call["query"]


def test_concurrent_apredicts_keep_queries_apart(llm, engine_calls):
    questions = [f"Question number {i}: what did keeper {i} log?" for i in range(3)]

    async def run():
        return await asyncio.gather(
            *(llm.apredict(QA_TEMPLATE, context_str=CONTEXT, query_str=q) for q in questions)
        )

    asyncio.run(run())
    assert sorted(call["query"] for call in engine_calls) == sorted(questions)


# Async -------------------------------------------------------------------------


def test_async_engine_work_runs_in_worker_threads(llm, engine_calls):
    async def run():
        loop_thread = threading.get_ident()
        await llm.acomplete(CONTEXT)
        await llm.achat(user_messages())
        stream = await llm.astream_complete(CONTEXT)
        pieces = [chunk async for chunk in stream]
        chat_stream = await llm.astream_chat(user_messages())
        chat_pieces = [chunk async for chunk in chat_stream]
        return loop_thread, pieces, chat_pieces

    loop_thread, pieces, chat_pieces = asyncio.run(run())
    assert len(engine_calls) == 4
    for call in engine_calls:
        assert call["thread"] != loop_thread
        assert call["step_threads"]
        assert loop_thread not in call["step_threads"]
    assert pieces[-1].raw["stats"]["prompt_tokens"] > 0
    assert chat_pieces[-1].raw["stats"]["prompt_tokens"] > 0


def test_event_loop_stays_responsive(llm, tiny_engine, monkeypatch):
    slow_generate = tiny_engine.generate

    def blocking_generate(*args, **kwargs):
        time.sleep(0.5)
        return slow_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_engine, "generate", blocking_generate)

    async def run():
        ticks = 0
        done = asyncio.Event()

        async def tick():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        await llm.acomplete(CONTEXT)
        done.set()
        await ticker
        return ticks

    assert asyncio.run(run()) >= 10


def test_async_results_match_sync(llm):
    sync_text = llm.complete(CONTEXT).text

    async def run():
        response = await llm.acomplete(CONTEXT)
        stream = await llm.astream_complete(CONTEXT)
        return response.text, "".join([chunk.delta async for chunk in stream])

    async_text, streamed_text = asyncio.run(run())
    assert async_text == sync_text
    assert streamed_text == sync_text


# Callbacks and instrumentation ---------------------------------------------------


def test_instrumentation_events_fire(llm, llm_events):
    llm.complete(CONTEXT)
    list(llm.stream_complete(CONTEXT))
    llm.chat(user_messages())
    list(llm.stream_chat(user_messages()))
    kinds = [type(event) for event in llm_events]
    assert kinds.count(LLMCompletionStartEvent) == 2
    assert kinds.count(LLMCompletionEndEvent) == 2
    assert kinds.count(LLMChatStartEvent) == 2
    assert kinds.count(LLMChatEndEvent) == 2
    assert LLMCompletionInProgressEvent in kinds
    assert LLMChatInProgressEvent in kinds
    ends = [event for event in llm_events if isinstance(event, (LLMCompletionEndEvent, LLMChatEndEvent))]
    assert all(event.response.raw["stats"]["prompt_tokens"] > 0 for event in ends)


def test_async_instrumentation_events_fire(llm, llm_events):
    async def run():
        await llm.acomplete(CONTEXT)
        stream = await llm.astream_chat(user_messages())
        async for _ in stream:
            pass

    asyncio.run(run())
    kinds = [type(event) for event in llm_events]
    assert kinds.count(LLMCompletionEndEvent) == 1
    assert kinds.count(LLMChatEndEvent) == 1
    assert LLMChatInProgressEvent in kinds


def test_callback_manager_sees_llm_events(tiny_engine):
    debug = LlamaDebugHandler()
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=4, callback_manager=CallbackManager([debug]))
    llm.complete(CONTEXT)
    llm.chat(user_messages())
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == 2


def test_token_counting_handler_reads_usage(tiny_engine):
    counter = TokenCountingHandler()
    llm = PromptDistillLLM(engine=tiny_engine, max_new_tokens=4, callback_manager=CallbackManager([counter]))
    response = llm.chat(user_messages())
    assert counter.prompt_llm_token_count == response.raw["stats"]["prompt_tokens"]
    assert counter.completion_llm_token_count == response.raw["stats"]["generated_tokens"]


# One call with everything ---------------------------------------------------------


def small_nodes(count: int = 30) -> list[TextNode]:
    return [
        TextNode(text=f"Passage {i}: the ship number {i} passed Gull Point on day {i} of the season, flying a flag.")
        for i in range(count)
    ]


def chat_calls(events) -> list[LLMChatStartEvent]:
    return [event for event in events if isinstance(event, LLMChatStartEvent)]


def test_compact_mode_sends_every_node_in_one_call(llm, llm_events):
    nodes = small_nodes()
    synthesizer = get_response_synthesizer(llm=llm, prompt_helper=llm.prompt_helper(), response_mode="compact")
    query_engine = SummaryIndex(nodes).as_query_engine(llm=llm, response_synthesizer=synthesizer)
    query_engine.query("Which ship passed on day 7?")
    calls = chat_calls(llm_events)
    assert len(calls) == 1
    sent = "\n".join(message.content for message in calls[0].messages)
    assert all(node.get_content() in sent for node in nodes)


def test_chunk_size_limit_splits_into_several_calls(llm, llm_events):
    synthesizer = get_response_synthesizer(
        llm=llm, prompt_helper=llm.prompt_helper(chunk_size_limit=200), response_mode="compact"
    )
    query_engine = SummaryIndex(small_nodes()).as_query_engine(llm=llm, response_synthesizer=synthesizer)
    query_engine.query("Which ship passed on day 7?")
    assert len(chat_calls(llm_events)) > 1


def test_simple_summarize_cuts_nodes_that_do_not_fit(llm, llm_events):
    # Reserving 1,600 of the 2,048 positions for output leaves under 400 for
    # text. simple_summarize joins the nodes and cuts the joined text to fit,
    # so the last nodes never reach the model.
    helper = llm.prompt_helper()
    helper.num_output = 1600
    synthesizer = get_response_synthesizer(llm=llm, prompt_helper=helper, response_mode="simple_summarize")
    nodes = small_nodes()
    query_engine = SummaryIndex(nodes).as_query_engine(llm=llm, response_synthesizer=synthesizer)
    query_engine.query("Which ship passed on day 7?")
    calls = chat_calls(llm_events)
    assert len(calls) == 1
    sent = "\n".join(message.content for message in calls[0].messages)
    assert nodes[0].get_content() in sent
    assert nodes[-1].get_content() not in sent


def test_explicit_prompt_helper_beats_global_settings(llm, llm_events, monkeypatch):
    # Reading Settings.context_window creates a global PromptHelper with
    # LlamaIndex's default window (3,900 tokens), which synthesizers then
    # prefer over the LLM's metadata unless a prompt_helper is passed.
    monkeypatch.setattr(Settings, "_prompt_helper", None)
    Settings.context_window = 1200
    assert Settings._prompt_helper is not None
    nodes = small_nodes()

    default_synthesizer = get_response_synthesizer(llm=llm, response_mode="compact")
    SummaryIndex(nodes).as_query_engine(llm=llm, response_synthesizer=default_synthesizer).query("Which ship?")
    assert len(chat_calls(llm_events)) > 1

    llm_events.clear()
    synthesizer = get_response_synthesizer(llm=llm, prompt_helper=llm.prompt_helper(), response_mode="compact")
    SummaryIndex(nodes).as_query_engine(llm=llm, response_synthesizer=synthesizer).query("Which ship?")
    assert len(chat_calls(llm_events)) == 1


def test_prompt_helper_counts_with_model_tokenizer(llm, tiny_engine):
    helper = llm.prompt_helper()
    text = "Martha Quill kept the Gull Point log."
    assert helper._token_counter.get_string_tokens(text) == len(tiny_engine.tokenizer.encode(text, add_special_tokens=False))
    assert helper.num_output == 6
    assert 2048 - 40 < helper.context_window < 2048
