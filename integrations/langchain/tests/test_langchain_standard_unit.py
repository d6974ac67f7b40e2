"""LangChain's standard unit tests for ChatPromptDistill.

The model is the embedded default (SmolLM2-135M-Instruct), named but never
loaded: these tests only build model objects, which must not load anything.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_promptdistill import ChatPromptDistill


class TestChatPromptDistillStandardUnit(ChatModelUnitTests):
    """LangChain's standard unit tests.

    Tool calling and structured output are off because ChatPromptDistill
    overrides neither ``bind_tools`` nor ``with_structured_output``. The
    environment and serialization tests are off because the model reads no
    environment variables and references an engine that cannot be serialized.
    """

    @property
    def chat_model_class(self) -> type[ChatPromptDistill]:
        return ChatPromptDistill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # No engine and no model_name: the default model, which is never loaded here.
        return {}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no request timeout, retries or API key, and the
        # model rejects fields it does not have, so those three are left out.
        params = super().standard_chat_model_params
        for name in ("timeout", "max_retries", "api_key"):
            params.pop(name, None)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False
