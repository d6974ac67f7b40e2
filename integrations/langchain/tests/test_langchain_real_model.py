"""Tests of the LangChain integration on the real SmolLM2-135M-Instruct model.

They cover LangChain's standard chat model suite, a RAG chain over Paul
Graham's essays (read from the shared data folder at run time) and bad input.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_promptdistill import (
    ChatPromptDistill,
    PromptDistillLLM,
    PromptDistillRAGPrompt,
    format_docs_for_promptdistill,
)
from promptdistill_rag import FullConfig, PromptDistillEngine
from promptdistill_rag import testing as engine_testing

pytestmark = pytest.mark.real_model

# The shared data folder sits beside the repository root.
ESSAYS = Path(__file__).resolve().parents[4] / "shared" / "data" / "paul_graham_essays"


# LangChain's standard suite ------------------------------------------------------


class TestChatPromptDistillStandard(ChatModelIntegrationTests):
    """LangChain's standard integration tests.

    Tool calling, structured output, JSON mode and multimodal input are off
    through the suite's capability properties, because the model has none of them.
    """

    @property
    def chat_model_class(self) -> type[ChatPromptDistill]:
        return ChatPromptDistill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The suite's prompts are one line, so the default config's min_keep
        # leaves them whole; 16 new tokens keep each call near a second on two CPU cores.
        return {"engine": engine_testing.default_engine(), "max_tokens": 16}

    @property
    def supports_model_override(self) -> bool:
        # One object serves one loaded model; a per-call model= other than its own raises.
        return False


def test_default_config_short_prompt(real_engine: PromptDistillEngine) -> None:
    chat = ChatPromptDistill(engine=real_engine, max_tokens=8)

    message = chat.invoke("Hello")

    assert message.content


# A RAG chain over real text -------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _split(text: str, size: int = 400) -> list[str]:
    """Split text into passages of about ``size`` characters at sentence ends."""
    sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text).strip())
    passages: list[str] = []
    current = ""
    for sentence in sentences:
        if current and len(current) + len(sentence) > size:
            passages.append(current.strip())
            current = ""
        current += " " + sentence
    if current.strip():
        passages.append(current.strip())
    return passages


class BM25Retriever(BaseRetriever):
    """Okapi BM25 (k1=1.2, b=0.75) over a list of documents; returns the top ``k``."""

    documents: list[Document]
    k: int = 30

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        terms = [collections.Counter(_words(doc.page_content)) for doc in self.documents]
        lengths = [sum(counts.values()) for counts in terms]
        average = sum(lengths) / len(lengths)
        frequency = collections.Counter(word for counts in terms for word in counts)
        total = len(self.documents)
        scores = []
        for counts, length in zip(terms, lengths):
            score = 0.0
            for word in _words(query):
                if word in counts:
                    idf = math.log(1 + (total - frequency[word] + 0.5) / (frequency[word] + 0.5))
                    score += idf * counts[word] * 2.2 / (counts[word] + 1.2 * (0.25 + 0.75 * length / average))
            scores.append(score)
        ranked = sorted(range(total), key=lambda index: -scores[index])
        return [self.documents[index] for index in ranked[: self.k]]


@pytest.fixture(scope="module")
def essay_retriever() -> BM25Retriever:
    if not ESSAYS.is_dir():
        pytest.skip(f"the essays are not at {ESSAYS}; the shared data folder is missing")
    documents = [
        Document(passage, metadata={"essay": path.stem})
        for path in sorted(ESSAYS.glob("*.txt"))
        for passage in _split(path.read_text(encoding="utf-8"))
    ]
    return BM25Retriever(documents=documents, k=30)


class LastMessage(BaseCallbackHandler):
    """Keeps the chat model's last output message, which the chain's parser turns into a string."""

    def __init__(self) -> None:
        self.message: AIMessage | None = None

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.message = response.generations[0][0].message


# Each question's answer appears in the retrieved passages and not in what
# the model answers without them. Measured with SmolLM2-135M-Instruct over the
# 30 passages that BM25 ranks highest (greedy, 24 new tokens), the full model
# answered 5 of 14 questions and the default config 2 of 14; the two tables
# below are the cases the tests keep.
# NOTE: on these essay passages the default config drops or misreads the gold
# passage far more often than on the needle and Natural Questions benchmarks
# (docs/benchmarks.md), so the default cases below record its misses.
FULL_ANSWERS = [
    ("Which company bought Viaweb?", "yahoo"),
    ("What was the first computer Paul Graham used?", "1401"),
]
DEFAULT_ANSWERS = [
    ("What company did Paul Graham work for that made software for documents?", "interleaf"),
]
DEFAULT_MISSES = [
    ("Which company bought Viaweb?", "yahoo"),
    ("What was the first computer Paul Graham used?", "1401"),
]


def _rag_cases() -> list[Any]:
    cases = [pytest.param(question, answer, FullConfig(), id=f"full-{answer}") for question, answer in FULL_ANSWERS]
    cases += [pytest.param(question, answer, None, id=f"default-{answer}") for question, answer in DEFAULT_ANSWERS]
    miss = pytest.mark.xfail(
        strict=True, reason="the default selection loses the answer on this question; FullConfig answers it"
    )
    cases += [
        pytest.param(question, answer, None, id=f"default-misses-{answer}", marks=miss)
        for question, answer in DEFAULT_MISSES
    ]
    return cases


@pytest.mark.parametrize(("question", "answer", "config"), _rag_cases())
def test_rag_chain_answers(
    real_engine: PromptDistillEngine,
    essay_retriever: BM25Retriever,
    question: str,
    answer: str,
    config: FullConfig | None,
) -> None:
    chat = ChatPromptDistill(engine=real_engine, distill_config=config, max_tokens=24)
    chain = {"context": essay_retriever, "question": RunnablePassthrough()} | PromptDistillRAGPrompt() | chat | StrOutputParser()
    recorder = LastMessage()
    prompt = format_docs_for_promptdistill(essay_retriever.invoke(question), question)
    prompt_tokens = chat.get_num_tokens_from_messages(prompt.to_messages())

    text = chain.invoke(question, config={"callbacks": [recorder]})

    stats = recorder.message.response_metadata["distill_stats"]
    assert len(prompt.chunks) == 30
    assert 2000 <= prompt_tokens <= 3000
    assert stats["prompt_tokens"] == prompt_tokens
    assert recorder.message.usage_metadata["input_tokens"] == prompt_tokens
    assert stats["query_source"] == ("query" if config is None else None)
    assert answer in text.lower()


def test_llm_reads_rag_prompt(real_engine: PromptDistillEngine, essay_retriever: BM25Retriever) -> None:
    question = "Which company bought Viaweb?"
    prompt = format_docs_for_promptdistill(essay_retriever.invoke(question)[:5], question)
    llm = PromptDistillLLM(engine=real_engine, max_tokens=16)

    result = llm.generate_prompt([prompt])

    stats = result.generations[0][0].generation_info["distill_stats"]
    assert stats["prompt_tokens"] == llm.get_num_tokens(prompt.to_string())
    assert stats["query_source"] == "query"
    assert stats["kept_tokens"][-1] < stats["prompt_tokens"]


# Bad input -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(real_engine: PromptDistillEngine) -> ChatPromptDistill:
    return ChatPromptDistill(engine=real_engine, max_tokens=8)


def _assert_usable(chat: ChatPromptDistill) -> None:
    message = chat.invoke([SystemMessage("You are a helpful assistant."), HumanMessage("What is the capital of France?")])
    assert message.content


def test_prompt_over_position_limit(chat: ChatPromptDistill, real_engine: PromptDistillEngine) -> None:
    if not ESSAYS.is_dir():
        pytest.skip(f"the essays are not at {ESSAYS}; the shared data folder is missing")
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(ESSAYS.glob("*.txt"))[:8])
    messages = [SystemMessage(text), HumanMessage("Summarize the essays.")]

    assert chat.get_num_tokens_from_messages(messages) > real_engine.max_positions
    with pytest.raises(ValueError, match=f"the model has {real_engine.max_positions} positions"):
        chat.invoke(messages)
    _assert_usable(chat)


def test_empty_messages(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="no messages"):
        chat.invoke([])
    _assert_usable(chat)


def test_last_message_not_human(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="end the messages with a HumanMessage"):
        chat.invoke([HumanMessage("Hello"), AIMessage("Hi! How can I help?")])
    _assert_usable(chat)


def test_unknown_keyword(chat: ChatPromptDistill) -> None:
    with pytest.raises(ValueError, match="unknown keyword argument 'frequency_penalty'"):
        chat.invoke("What is the capital of France?", frequency_penalty=0.5)
    _assert_usable(chat)
