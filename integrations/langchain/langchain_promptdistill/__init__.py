"""LangChain integration of promptdistill-rag: local models that read the whole retriever output.

Example:
    >>> from langchain_promptdistill import ChatPromptDistill  # doctest: +SKIP
    >>> chat = ChatPromptDistill(max_tokens=64, distill_config={"method": "promptdistill", "keep": 512})  # doctest: +SKIP
    >>> chat.invoke("What is the capital of France?").content  # doctest: +SKIP
"""

from .chat_models import ChatPromptDistill
from .llms import PromptDistillLLM
from .rag import PromptDistillPromptValue, PromptDistillRAGPrompt, format_docs_for_promptdistill

__all__ = [
    "ChatPromptDistill",
    "PromptDistillLLM",
    "PromptDistillPromptValue",
    "PromptDistillRAGPrompt",
    "format_docs_for_promptdistill",
]

__version__ = "0.1.0"
