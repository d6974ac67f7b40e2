"""Fixtures of the LlamaIndex integration's tests: engines, an engine-call recorder and an event collector."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent

from promptdistill_rag import DistillConfig, PromptDistillEngine
from promptdistill_rag import testing as engine_testing

# keep=0.5 leaves a budget above the 12 always-kept tokens (4 sink, 8 suffix)
# for the short prompts of the unit tests, and min_keep=1 lets it drop tokens
# from them (the default min_keep leaves prompts under 256 tokens whole).
TINY_CONFIG = DistillConfig(keep=0.5, min_keep=1)


@pytest.fixture(scope="session")
def tiny_engine() -> PromptDistillEngine:
    """A random-weight Llama engine with 2,048 positions; seed 2 makes its greedy text vary."""
    return engine_testing.tiny_engine("llama", config=TINY_CONFIG, seed=2)


@pytest.fixture(scope="session")
def real_engine() -> PromptDistillEngine:
    """The shared engine with the real SmolLM2-135M-Instruct model, loaded once per process."""
    return engine_testing.default_engine()


class EngineCall(dict):
    """The keyword arguments of one engine ``stream`` call, plus the thread it ran in and the threads of its steps."""


class RecordingStream:
    """Pass a ``GenerationStream`` through, noting the thread of every step."""

    def __init__(self, inner: Any, call: EngineCall) -> None:
        self._inner = inner
        self._call = call

    def __iter__(self) -> RecordingStream:
        return self

    def __next__(self) -> str:
        self._call["step_threads"].append(threading.get_ident())
        return next(self._inner)

    def close(self) -> None:
        self._call["closed"] = True
        self._inner.close()

    @property
    def result(self) -> Any:
        return self._inner.result


@pytest.fixture
def engine_calls(tiny_engine: PromptDistillEngine, monkeypatch: pytest.MonkeyPatch) -> list[EngineCall]:
    """Record every ``stream`` call of the tiny engine (``generate`` calls ``stream``)."""
    calls: list[EngineCall] = []
    original = tiny_engine.stream

    def recording_stream(prompt: Any, **kwargs: Any) -> RecordingStream:
        call = EngineCall(prompt=prompt, **kwargs, thread=threading.get_ident(), step_threads=[], closed=False)
        calls.append(call)
        return RecordingStream(original(prompt, **kwargs), call)

    monkeypatch.setattr(tiny_engine, "stream", recording_stream)
    return calls


class _Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "TestEventCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def llm_events():
    """Collect every instrumentation event that reaches LlamaIndex's root dispatcher during the test."""
    collector = _Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(collector)
    yield collector.events
    root.event_handlers.remove(collector)
