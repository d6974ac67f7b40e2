"""Fixtures of the LangChain integration's tests: a tiny random-weight engine and the real default engine."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from promptdistill_rag import DistillConfig, PromptDistillEngine
from promptdistill_rag import testing as engine_testing


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object):
    # The standard suites of langchain-tests define unmarked async tests and
    # expect pytest-asyncio's auto mode. The repository's pytest configuration
    # does not set it, so the mark added here runs them in strict mode.
    if inspect.iscoroutinefunction(obj):
        pytest.mark.asyncio(obj)
    return (yield)


# The tests' prompts are short, so min_keep=1 lets keep=0.5 drop tokens from
# them (the default min_keep leaves prompts under 256 tokens whole).
TINY_CONFIG = DistillConfig(keep=0.5, min_keep=1)


@pytest.fixture(scope="session")
def tiny_engine() -> PromptDistillEngine:
    """A random-weight Llama engine that generates in milliseconds; seed 2 makes its greedy text vary."""
    return engine_testing.tiny_engine("llama", config=TINY_CONFIG, seed=2)


@pytest.fixture(scope="session")
def real_engine() -> PromptDistillEngine:
    """The shared engine with the real SmolLM2-135M-Instruct model, loaded once per process."""
    return engine_testing.default_engine()


@pytest.fixture
def engine_calls(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every ``stream`` call the tiny engine gets (``generate`` calls ``stream``)."""
    calls: list[dict[str, Any]] = []
    original = tiny_engine.stream

    def recording_stream(prompt: Any, **kwargs: Any):
        calls.append({"prompt": prompt, **kwargs})
        return original(prompt, **kwargs)

    monkeypatch.setattr(tiny_engine, "stream", recording_stream)
    return calls
