"""Python's documentation as a retrieval collection: loading, splitting and a BM25 retriever.

The text is ``pydoc_data.topics``, which ships with CPython (79 topics, about
113,000 tokens with SmolLM2's tokenizer), so the examples need no data files.
The retriever ranks by keyword statistics alone and needs no embedding model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr

__all__ = ["BM25Retriever", "load_python_docs", "split_documents", "split_text"]

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_TERM = re.compile(r"[a-z0-9_]+")

# Question words and function words that would otherwise match nearly every chunk.
_STOP_WORDS = frozenset(
    """a an and are as at be by can do does for from how i if in is it of on or so that the
    their there these this to was what when where which who why will with you your""".split()
)


def load_python_docs() -> list[Document]:
    """Return one ``Document`` per topic of ``pydoc_data.topics``, in name order, titled by topic name."""
    from pydoc_data.topics import topics

    return [
        Document(page_content=topics[name].strip(), metadata={"title": name})
        for name in sorted(topics)
        if topics[name].strip()
    ]


def _pieces(text: str, chunk_size: int) -> Iterable[str]:
    """Yield pieces of at most ``chunk_size`` characters: paragraphs, else lines, else runs of words."""
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if len(paragraph) <= chunk_size:
            yield paragraph
            continue
        for line in paragraph.split("\n"):
            if len(line) <= chunk_size:
                yield line
                continue
            words: list[str] = []
            length = 0
            for word in line.split():
                if words and length + 1 + len(word) > chunk_size:
                    yield " ".join(words)
                    words, length = [], 0
                # A single word longer than chunk_size is cut, so no piece exceeds the limit.
                while len(word) > chunk_size:
                    yield word[:chunk_size]
                    word = word[chunk_size:]
                length += len(word) + (1 if words else 0)
                words.append(word)
            if words:
                yield " ".join(words)


def split_text(text: str, chunk_size: int = 500) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_size`` characters, at paragraph breaks where possible.

    Consecutive paragraphs are packed into one chunk while they fit. A
    paragraph longer than ``chunk_size`` is split at line breaks, and a line
    longer than that at spaces.

    Raises:
        ValueError: If ``chunk_size`` is below 1.

    Example:
        >>> split_text("one\\n\\ntwo\\n\\nthree", chunk_size=8)
        ['one\\n\\ntwo', 'three']
    """
    if chunk_size < 1:
        msg = f"chunk_size must be at least 1 character, got {chunk_size}"
        raise ValueError(msg)
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, chunk_size):
        candidate = f"{current}\n\n{piece}" if current else piece
        if len(candidate) <= chunk_size:
            current = candidate
            continue
        chunks.append(current)
        current = piece
    if current:
        chunks.append(current)
    return chunks


def split_documents(documents: Sequence[Document], chunk_size: int = 500) -> list[Document]:
    """Split each document with ``split_text``; each chunk keeps its document's metadata plus its ``chunk`` number."""
    chunks = []
    for document in documents:
        for number, text in enumerate(split_text(document.page_content, chunk_size)):
            chunks.append(Document(page_content=text, metadata={**document.metadata, "chunk": number}))
    return chunks


def _terms(text: str) -> list[str]:
    return [term for term in _TERM.findall(text.lower()) if term not in _STOP_WORDS]


class BM25Retriever(BaseRetriever):
    """Okapi BM25 keyword retriever over documents held in memory.

    A chunk scores high when it contains the query's rarer words often,
    relative to its length. Ties keep the collection's order. The index is
    built once, when the retriever is created.

    Example:
        >>> from langchain_core.documents import Document
        >>> retriever = BM25Retriever(documents=[Document("cats purr"), Document("dogs bark")], k=1)
        >>> retriever.invoke("why do dogs bark")[0].page_content
        'dogs bark'
    """

    documents: list[Document]
    """The collection to search."""
    k: int = Field(default=50, ge=1)
    """Number of documents returned per query."""
    k1: float = Field(default=1.5, gt=0)
    """BM25 term-frequency saturation."""
    b: float = Field(default=0.75, ge=0, le=1)
    """BM25 length normalisation: 0 ignores document length, 1 normalises fully."""

    _term_counts: list[Counter[str]] = PrivateAttr(default_factory=list)
    _lengths: list[int] = PrivateAttr(default_factory=list)
    _idf: dict[str, float] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        self._term_counts = [Counter(_terms(document.page_content)) for document in self.documents]
        self._lengths = [sum(counts.values()) for counts in self._term_counts]
        document_frequency: Counter[str] = Counter()
        for counts in self._term_counts:
            document_frequency.update(counts.keys())
        total = len(self.documents)
        # The "+ 1" inside the log keeps the weight of a word found in most chunks positive.
        self._idf = {
            term: math.log(1 + (total - found + 0.5) / (found + 0.5)) for term, found in document_frequency.items()
        }

    def scores(self, query: str) -> list[float]:
        """Return the BM25 score of every document for ``query``, in collection order."""
        average_length = sum(self._lengths) / max(1, len(self._lengths))
        query_terms = set(_terms(query))
        scores = []
        for counts, length in zip(self._term_counts, self._lengths):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * length / max(average_length, 1e-9))
            for term in query_terms:
                frequency = counts.get(term, 0)
                if frequency:
                    score += self._idf[term] * frequency * (self.k1 + 1) / (frequency + norm)
            scores.append(score)
        return scores

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        scores = self.scores(query)
        ranked = sorted(range(len(scores)), key=lambda index: -scores[index])
        return [self.documents[index] for index in ranked[: self.k]]
