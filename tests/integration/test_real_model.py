"""The real SmolLM2-135M-Instruct model on real text: equivalence, the needle, every method, and ``ask``."""

from __future__ import annotations

import json

import pytest
import torch

from promptdistill_rag import (
    DistillConfig,
    FullConfig,
    GemFilterConfig,
    H2OConfig,
    SnapKVConfig,
    TruncateConfig,
)
from promptdistill_rag.bench.needle import build_needle_case, load_haystack, needle_score
from promptdistill_rag.cli import main

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def haystack(data_dir):
    return load_haystack(data_dir / "paul_graham_essays")


@pytest.fixture(scope="module")
def needle_cases(real_engine, haystack):
    return {depth: build_needle_case(real_engine.tokenizer, haystack, 2000, depth) for depth in (0.1, 0.5, 0.9)}


def test_full_config_equals_transformers_generate(real_engine):
    from pydoc_data.topics import topics

    messages = [{"role": "user", "content": topics["nonlocal"][:1200] + "\n\nWhat does the nonlocal statement do?"}]
    input_ids = real_engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    output = real_engine.model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=24, do_sample=False
    )
    expected = output[0, input_ids.shape[1] :].tolist()
    if expected and expected[-1] in real_engine.eos_token_ids:
        expected = expected[:-1]
    for config in (FullConfig(), DistillConfig(keep=1.0)):
        result = real_engine.generate(messages, config=config, max_new_tokens=24)
        assert result.token_ids == expected
    stream = real_engine.stream(messages, config=FullConfig(), max_new_tokens=24)
    assert "".join(stream) == real_engine.tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_needle_found_with_default_config(real_engine, needle_cases, depth):
    case = needle_cases[depth]
    result = real_engine.generate(case.messages, query=case.query, max_new_tokens=40)
    stats = result.stats
    assert stats.method == "promptdistill"
    assert stats.query_source == "query"
    assert stats.kept_tokens[-1] <= stats.prompt_tokens // 2
    assert needle_score(result.text) >= 0.75, result.text
    # The needle sentence itself survived selection.
    prepared = real_engine.prepare(case.messages, query=case.query)
    start = prepared.text.index(case.needle)
    needle_tokens = [i for i, (a, b) in enumerate(prepared.offsets) if b > start and a < start + len(case.needle)]
    kept = set(stats.kept_indices)
    assert sum(i in kept for i in needle_tokens) >= 0.9 * len(needle_tokens)


def _layer(engine):
    config = engine.config
    return config.selection_layers[-1] if config.method == "promptdistill" else 0.5


@pytest.mark.parametrize("budget", [0.25, 0.5])
@pytest.mark.parametrize("method", ["promptdistill", "gemfilter", "snapkv", "h2o", "truncate"])
def test_every_method_runs_on_needle(real_engine, needle_cases, method, budget):
    case = needle_cases[0.5]
    configs = {
        "promptdistill": real_engine.config.model_copy(update={"keep": (budget,)}),
        "gemfilter": GemFilterConfig(selection_layer=_layer(real_engine), keep=budget),
        "snapkv": SnapKVConfig(keep=budget),
        "h2o": H2OConfig(keep=budget),
        "truncate": TruncateConfig(keep=budget),
    }
    result = real_engine.generate(case.messages, query=case.query, config=configs[method], max_new_tokens=24)
    stats = result.stats
    budget_tokens = -(-budget * stats.prompt_tokens // 1)
    assert stats.method == method
    assert stats.generated_tokens == len(result.token_ids) > 0
    assert stats.kept_tokens[-1] <= budget_tokens
    layers = real_engine.num_layers
    if method in ("snapkv", "h2o"):
        assert stats.kv_cache_entries == stats.kept_tokens[-1] * layers
        assert stats.kept_indices is None
    else:
        assert len(stats.kept_indices) == stats.kept_tokens[-1]
        assert stats.kept_indices == sorted(stats.kept_indices)
    if method in ("gemfilter", "truncate"):
        assert stats.kv_cache_entries == stats.kept_tokens[-1] * layers
    print(f"{method} keep={budget}: {result.text!r}")


def test_ask_on_a_folder(data_dir, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("addiction.txt", "boss.txt", "founders.txt"):
        (folder / name).write_text((data_dir / "paul_graham_essays" / name).read_text())
    (folder / "notes.md").write_text("The meeting about the new office moved to Thursday at 3 pm.")
    status = main(["ask", "--docs", str(folder), "--question", "When is the meeting about the new office?", "--json"])
    assert status == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["documents"] == 4
    assert payload["stats"]["prompt_tokens"] > 2000
    assert "thursday" in payload["answer"].lower() or "3" in payload["answer"]
    retention = {row["title"]: row["kept_share"] for row in payload["document_retention"]}
    assert retention["notes.md"] == 1.0


def test_ask_default_corpus(capsys):
    status = main(["ask", "--question", "What does the del statement do?", "--max-new-tokens", "48"])
    assert status == 0
    output = capsys.readouterr().out
    assert "prompt tokens:" in output
    tokens = int(output.split("prompt tokens:")[1].split()[0])
    assert tokens > 4000
    assert "del" in output.lower()


def test_ask_collection_over_limit(tmp_path, capsys):
    (tmp_path / "big.txt").write_text("The river flows to the sea. " * 3000)
    status = main(["ask", "--docs", str(tmp_path), "--question", "Where does the river flow?"])
    assert status == 2
    error = capsys.readouterr().err
    assert "8192 positions" in error
    assert "prompt tokens fit" in error
