"""LlamaIndex LLM integration of promptdistill-rag: hand a local LLM the whole retriever output."""

from llama_index.llms.promptdistill.base import CALL_KEYWORDS, PromptDistillLLM

__all__ = ["CALL_KEYWORDS", "PromptDistillLLM"]
