"""PromptDistillLLM with the real SmolLM2-135M-Instruct model inside LlamaIndex query and chat engines.

The query engine reads 30 nodes (about 2,100 prompt tokens) cut from a Paul
Graham essay in the shared evaluation data and answers a question whose
answer sits in one node.

Measured on these 30 nodes (greedy, 32 new tokens), the plain model and the
default config answer different questions:

================================================================  =====  =======
question                                                          full   default
================================================================  =====  =======
What language did the author use on the IBM 1401? (Fortran)       yes    no
What was the default language at Cornell? (PL/I)                  no     yes
Who was the author's friend at junior high school? (Rich Draves)  no     yes
When was the book On Lisp published? (1993)                       yes    yes
Which novel by Heinlein made the author want to work on AI?       yes    yes
What did the author reverse-engineer for his undergraduate        yes    yes
thesis? (SHRDLU)
In which grade did the author write his first programs? (9th)     no     no
What computer did the author's father buy? (TRS-80)               no     no
================================================================  =====  =======

So the tests ask the plain model the Fortran question and the default config
the PL/I question. The default config's miss on the Fortran question stays as
an expected failure: at layer 14 of 30 the 135M model ranks the nodes that
name the 1401 above the one that names Fortran without naming the machine.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from llama_index.core import Document, SummaryIndex, get_response_synthesizer
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.llms import ChatMessage
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode

from llama_index.llms.promptdistill import PromptDistillLLM
from promptdistill_rag import FullConfig, PromptDistillEngine

pytestmark = pytest.mark.real_model

QUESTION = "What language did the author use on the IBM 1401?"
ANSWER = "fortran"
DISTILLED_QUESTION = "What was the default language at Cornell?"
DISTILLED_ANSWER = "pl/i"

SHOP_SYSTEM_PROMPT = (
    "You are a helpful assistant for a small bookshop called Paper Lantern. "
    "The shop opens at 9 am and closes at 6 pm, Monday to Saturday. Answer in one short sentence."
)


def shared_data_dir() -> Path | None:
    """Return the evaluation data folder: ``PROMPTDISTILL_DATA``, else ``shared/data`` beside the repository."""
    configured = os.environ.get("PROMPTDISTILL_DATA")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    for candidate in candidates:
        if (candidate / "paul_graham_essays").is_dir():
            return candidate
    return None


@pytest.fixture(scope="module")
def essay_nodes() -> list[BaseNode]:
    """The first 30 nodes of "What I Worked On", split by LlamaIndex's SentenceSplitter at 80 tokens."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("evaluation data not found: set PROMPTDISTILL_DATA to the folder holding paul_graham_essays/")
    text = (data / "paul_graham_essays" / "worked.txt").read_text(encoding="utf-8")
    nodes = SentenceSplitter(chunk_size=80, chunk_overlap=0).get_nodes_from_documents([Document(text=text)])
    nodes = nodes[:30]
    assert sum("Fortran" in node.get_content() for node in nodes) == 1
    assert sum("PL/I" in node.get_content() for node in nodes) == 1
    return nodes


def build_query_engine(llm: PromptDistillLLM, nodes: list[BaseNode], *, streaming: bool):
    """The recipe of the README: every node in one call, counted with the model's own tokenizer."""
    synthesizer = get_response_synthesizer(
        llm=llm, prompt_helper=llm.prompt_helper(), response_mode="compact", streaming=streaming
    )
    return SummaryIndex(nodes).as_query_engine(llm=llm, response_synthesizer=synthesizer)


def as_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role.value, "content": message.content} for message in messages]


def check_single_call_with_every_node(events, nodes: list[BaseNode], engine: PromptDistillEngine) -> dict:
    """Assert that one LLM call got every node and the whole prompt; return that call's stats."""
    starts = [event for event in events if isinstance(event, LLMChatStartEvent)]
    ends = [event for event in events if isinstance(event, LLMChatEndEvent)]
    assert len(starts) == 1
    assert len(ends) == 1
    assert not [event for event in events if isinstance(event, LLMCompletionStartEvent)]
    sent = "\n".join(message.content for message in starts[0].messages)
    missing = [index for index, node in enumerate(nodes) if node.get_content() not in sent]
    assert missing == []
    stats = ends[0].response.raw["stats"]
    assert stats["prompt_tokens"] == engine.count_tokens(as_dicts(starts[0].messages))
    return stats


def test_plain_model_answers_from_all_nodes(real_engine, essay_nodes, llm_events):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=32, distill_config=FullConfig())
    response = build_query_engine(llm, essay_nodes, streaming=False).query(QUESTION)
    stats = check_single_call_with_every_node(llm_events, essay_nodes, real_engine)
    assert stats["method"] == "full"
    assert stats["prompt_tokens"] > 2000
    assert len(response.source_nodes) == 30
    assert ANSWER in str(response).lower()


def ask(query_engine, question: str, mode: str) -> str:
    """Run ``question`` through ``query``, ``aquery`` or their streaming forms and return the response text."""
    if mode == "query":
        return str(query_engine.query(question))
    if mode == "aquery":
        return str(asyncio.run(query_engine.aquery(question)))
    if mode == "stream":
        return "".join(query_engine.query(question).response_gen)

    async def read_stream() -> str:
        response = await query_engine.aquery(question)
        return "".join([token async for token in response.async_response_gen()])

    return asyncio.run(read_stream())


@pytest.mark.parametrize("mode", ["query", "aquery", "stream", "astream"])
def test_query_engine_one_distilled_call(real_engine, essay_nodes, llm_events, mode):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=32)
    query_engine = build_query_engine(llm, essay_nodes, streaming=mode in ("stream", "astream"))
    answer = ask(query_engine, DISTILLED_QUESTION, mode)

    stats = check_single_call_with_every_node(llm_events, essay_nodes, real_engine)
    assert stats["method"] == "promptdistill"
    assert stats["query_source"] == "query"
    assert stats["kept_tokens"][-1] < stats["prompt_tokens"]
    selection = f"kept {stats['kept_tokens']} of {stats['prompt_tokens']} tokens"
    assert DISTILLED_ANSWER in answer.lower(), f"{selection}, answer {answer!r}"


@pytest.mark.xfail(
    strict=True, reason="the default config drops the node naming Fortran; see the table in the module docstring"
)
def test_default_config_misses_the_fortran_node(real_engine, essay_nodes):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=32)
    assert ANSWER in ask(build_query_engine(llm, essay_nodes, streaming=False), QUESTION, "query").lower()


def test_chat_engine_plain_model_two_turns(real_engine):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=32, distill_config=FullConfig())
    chat_engine = SimpleChatEngine.from_defaults(llm=llm, system_prompt=SHOP_SYSTEM_PROMPT)
    first = chat_engine.chat("What is the name of the shop?")
    second = chat_engine.chat("What time does it close?")
    assert "paper lantern" in str(first).lower()
    assert "6" in str(second)


def test_chat_engine_two_turns(real_engine, llm_events):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=32)
    chat_engine = SimpleChatEngine.from_defaults(llm=llm, system_prompt=SHOP_SYSTEM_PROMPT)
    first = chat_engine.chat("What is the name of the shop?")
    second = chat_engine.chat("What time does it close?")

    starts = [event for event in llm_events if isinstance(event, LLMChatStartEvent)]
    assert len(starts) == 2
    # The second call carries the system prompt and the whole first exchange.
    roles = [message.role.value for message in starts[1].messages]
    assert roles == ["system", "user", "assistant", "user"]
    ends = [event for event in llm_events if isinstance(event, LLMChatEndEvent)]
    # Both prompts are shorter than the default min_keep, so they run whole;
    # the second names its last user message as the query.
    for end in ends:
        stats = end.response.raw["stats"]
        assert stats["query_source"] is None
        assert stats["kept_tokens"] == [stats["prompt_tokens"]]
    assert "paper lantern" in str(first).lower()
    assert "6" in str(second)


def test_default_config_answers_short_prompt(real_engine):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=16)
    assert "paris" in llm.complete("What is the capital of France?").text.lower()


def test_bad_input_leaves_llm_usable(real_engine):
    llm = PromptDistillLLM(engine=real_engine, max_new_tokens=8, distill_config=FullConfig())
    assert llm.metadata.context_window == 8192

    with pytest.raises(ValueError, match="8192 positions"):
        llm.complete("lighthouse " * 8300)
    with pytest.raises(ValueError, match="8192 positions"):
        llm.stream_chat([ChatMessage(role="user", content="lighthouse " * 8300)])
    with pytest.raises(ValueError, match="empty"):
        llm.complete("")
    with pytest.raises(ValueError, match="'max_tokens'"):
        llm.complete("What is the capital of France?", max_tokens=4)
    with pytest.raises(ValueError, match="8192"):
        PromptDistillLLM(engine=real_engine, max_new_tokens=8192)

    response = llm.complete("What is the capital of France?")
    assert "paris" in response.text.lower()
