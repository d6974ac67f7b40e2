"""The process-wide engine cache that the framework integrations share."""

from __future__ import annotations

import gc
import weakref

import pytest

import promptdistill_rag.shared as shared_cache
from promptdistill_rag import PromptDistillEngine
from promptdistill_rag import testing as engine_testing


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Replace loading with a tiny engine and record each load's name and keywords."""
    calls: list[tuple[str, dict]] = []

    def fake_from_pretrained(cls: type, name: str, **kwargs: object) -> PromptDistillEngine:
        calls.append((name, kwargs))
        return engine_testing.tiny_engine("llama")

    monkeypatch.setattr(shared_cache, "_ENGINES", weakref.WeakValueDictionary())
    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(fake_from_pretrained))
    return calls


def test_same_keywords_load_once(loads: list[tuple[str, dict]]) -> None:
    first = shared_cache.shared_engine("org/model", {"device_map": {"": "cpu"}})
    again = shared_cache.shared_engine("org/model", {"device_map": {"": "cpu"}})
    other = shared_cache.shared_engine("org/model", {"device_map": {"": "meta"}})
    assert first is again
    assert other is not first
    assert loads == [("org/model", {"device_map": {"": "cpu"}}), ("org/model", {"device_map": {"": "meta"}})]


def test_unreferenced_engine_freed(loads: list[tuple[str, dict]]) -> None:
    engine = shared_cache.shared_engine("org/model")
    reference = weakref.ref(engine)
    del engine
    gc.collect()
    assert reference() is None
    shared_cache.shared_engine("org/model")
    assert len(loads) == 2


def test_failed_load_keeps_cache(loads: list[tuple[str, dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cls: type, name: str, **kwargs: object) -> PromptDistillEngine:
        raise OSError(f"no model at {name}")

    good = shared_cache.shared_engine("org/model")
    monkeypatch.setattr(PromptDistillEngine, "from_pretrained", classmethod(broken))
    with pytest.raises(OSError, match="no model at org/missing"):
        shared_cache.shared_engine("org/missing")
    assert shared_cache.shared_engine("org/model") is good
