"""Document collections for ``promptdistill ask``: files from disk, or Python's documentation topics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Document", "default_corpus", "read_documents"]

_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Document:
    """A text with a title (a file name or a documentation topic)."""

    title: str
    text: str


def read_documents(paths: Sequence[str | Path]) -> list[Document]:
    """Read every ``.txt`` and ``.md`` file under ``paths`` (files or folders, searched recursively).

    Files are read in sorted path order; empty files are skipped.

    Raises:
        FileNotFoundError: If a path does not exist or no text files are found.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            msg = f"document path {path} does not exist"
            raise FileNotFoundError(msg)
        if path.is_file():
            files.append(path)
        else:
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES))
    documents = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            documents.append(Document(title=path.name, text=text))
    if not documents:
        shown = ", ".join(str(p) for p in paths)
        msg = f"no non-empty .txt or .md files found under {shown}"
        raise FileNotFoundError(msg)
    return documents


def default_corpus(
    count_tokens: Callable[[str], int], token_budget: int, *, max_document_tokens: int = 600
) -> list[Document]:
    """Return Python documentation topics (``pydoc_data.topics``, shipped with CPython) filling ``token_budget`` tokens.

    Topics are taken in name order, and only those of at most
    ``max_document_tokens`` tokens, so that the collection looks like many
    retrieved chunks rather than a few long chapters. A topic that would
    overflow the budget is skipped and smaller ones after it may still fit.
    The whole collection is far larger (about 113,000 tokens with the default
    model's tokenizer).

    Args:
        count_tokens: Returns a text's token count.
        token_budget: Tokens the documents may take together.
        max_document_tokens: Maximum length of an included topic, in tokens.
    """
    from pydoc_data.topics import topics

    documents = []
    used = 0
    for name in sorted(topics):
        text = topics[name].strip()
        tokens = count_tokens(text) + 8  # the per-document header and separator
        if tokens > max_document_tokens or used + tokens > token_budget:
            continue
        documents.append(Document(title=name, text=text))
        used += tokens
    return documents
