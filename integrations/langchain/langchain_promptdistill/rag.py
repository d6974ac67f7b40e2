"""Format retrieved documents and a question into the project's RAG prompt, with the hints the models read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from typing_extensions import override

from promptdistill_rag.rag import DEFAULT_INSTRUCTION, build_rag_prompt

from ._common import HINTS_KEY

__all__ = ["PromptDistillPromptValue", "PromptDistillRAGPrompt", "format_docs_for_promptdistill"]


class PromptDistillPromptValue(ChatPromptValue):
    """A RAG prompt: chat messages plus the question and passages as they appear in them.

    ``ChatPromptDistill`` reads ``query`` and ``chunks`` from the last human
    message's ``additional_kwargs["promptdistill"]``; ``PromptDistillLLM``
    reads them from the same place and sends ``to_string()`` to the model.
    Other chat models ignore that key.
    """

    query: str
    """The question as it appears in the prompt."""
    chunks: list[str]
    """The passages as they appear in the prompt, best first."""
    text: str
    """The prompt as one string: the system message (if any), a blank line, then the user message."""

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    def to_string(self) -> str:
        """Return the prompt as plain text, without the ``Human:`` prefixes of ``ChatPromptValue``."""
        return self.text


def _passage(doc: Document | str, index: int, title_key: str | None) -> tuple[str, str | None]:
    if isinstance(doc, Document):
        title = doc.metadata.get(title_key) if title_key else None
        return doc.page_content, None if title is None else str(title)
    if isinstance(doc, str):
        return doc, None
    msg = f"document {index} must be a langchain Document or a string, got {type(doc).__name__}"
    raise TypeError(msg)


def format_docs_for_promptdistill(
    docs: Sequence[Document | str],
    question: str,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    system: str | None = None,
    title_key: str | None = "title",
) -> PromptDistillPromptValue:
    """Format retrieved documents and a question with ``promptdistill_rag.rag.build_rag_prompt``.

    Each document becomes one passage headed ``Document [i]`` (with its
    ``metadata[title_key]`` as title), in the given (rank) order, and the
    question comes last. The human message stores the question and the
    passages in ``additional_kwargs["promptdistill"]``, so that the models of
    this package pass them on as the engine's ``query`` and ``chunks``.

    Args:
        docs: Retrieved documents (or plain strings), best first.
        question: The user's question.
        instruction: The line before the documents.
        system: Optional system message.
        title_key: Metadata key of a document's title; None for no titles.

    Raises:
        TypeError, ValueError: On an empty question or a document of the wrong type.

    Example:
        >>> from langchain_core.documents import Document
        >>> prompt = format_docs_for_promptdistill([Document("Alice wrote it.")], "Who wrote it?")
        >>> prompt.query, prompt.chunks
        ('Who wrote it?', ['Document [1]: Alice wrote it.'])
    """
    if isinstance(docs, (str, Document)) or not isinstance(docs, Sequence):
        msg = f"docs must be a list of Documents, got {type(docs).__name__}"
        raise TypeError(msg)
    passages, titles = zip(*(_passage(doc, index, title_key) for index, doc in enumerate(docs))) if docs else ((), ())
    rag = build_rag_prompt(question, list(passages), titles=list(titles), instruction=instruction, system=system)
    hints = {"query": rag.query, "chunks": list(rag.chunks)}
    messages = []
    for message in rag.messages:
        if message["role"] == "system":
            messages.append(SystemMessage(content=message["content"]))
        else:
            messages.append(HumanMessage(content=message["content"], additional_kwargs={HINTS_KEY: hints}))
    text = f"{system.strip()}\n\n{rag.text}" if system else rag.text
    return PromptDistillPromptValue(messages=messages, query=rag.query, chunks=list(rag.chunks), text=text)


class PromptDistillRAGPrompt(RunnableSerializable[dict, PromptDistillPromptValue]):
    """The prompt step of a RAG chain: ``{"context": documents, "question": str}`` in, a RAG prompt out.

    It calls ``format_docs_for_promptdistill``, so the chunk boundaries stay
    visible to the engine and the question becomes its ``query``.

    Example:
        .. code-block:: python

            from langchain_core.output_parsers import StrOutputParser
            from langchain_core.runnables import RunnablePassthrough

            chain = (
                {"context": retriever, "question": RunnablePassthrough()}
                | PromptDistillRAGPrompt()
                | ChatPromptDistill(engine=engine)
                | StrOutputParser()
            )
            chain.invoke("Who wrote it?")
    """

    instruction: str = DEFAULT_INSTRUCTION
    """The line before the documents."""
    system: str | None = None
    """Optional system message."""
    title_key: str | None = "title"
    """Metadata key of a document's title; None for no titles."""
    context_key: str = "context"
    """Input key of the retrieved documents."""
    question_key: str = "question"
    """Input key of the question."""

    model_config = {"extra": "forbid"}

    @override
    def invoke(self, input: dict, config: RunnableConfig | None = None, **kwargs: Any) -> PromptDistillPromptValue:
        return self._call_with_config(self._format, input, config, run_type="prompt")

    def _format(self, value: dict) -> PromptDistillPromptValue:
        if not isinstance(value, Mapping):
            msg = (
                f"PromptDistillRAGPrompt takes a dict with {self.context_key!r} and {self.question_key!r}, "
                f"got {type(value).__name__}"
            )
            raise TypeError(msg)
        missing = [key for key in (self.context_key, self.question_key) if key not in value]
        if missing:
            msg = f"PromptDistillRAGPrompt input is missing {missing}; it needs {self.context_key!r} and {self.question_key!r}"
            raise ValueError(msg)
        docs = value[self.context_key]
        if isinstance(docs, str):
            msg = (
                f"{self.context_key!r} is a string; pass the retriever's Documents unformatted, "
                "so that each one stays a separate passage"
            )
            raise TypeError(msg)
        return format_docs_for_promptdistill(
            docs,
            value[self.question_key],
            instruction=self.instruction,
            system=self.system,
            title_key=self.title_key,
        )
