"""Every public entry point rejects bad input with a clear error and stays usable."""

import threading

import pytest
import torch

from promptdistill_rag import DistillConfig, FullConfig, GemFilterConfig, PromptDistillEngine, SnapKVConfig, TruncateConfig
from promptdistill_rag.testing import default_tokenizer, tiny_engine, tiny_model

PROMPT = "The archive holds letters from 1890 to 1920. Most were written by the mayor. Question: who wrote them?"


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


@pytest.fixture(scope="module")
def reference(engine):
    return engine.generate(PROMPT, config=FullConfig(), max_new_tokens=5).token_ids


def still_usable(engine, reference):
    assert engine.generate(PROMPT, config=FullConfig(), max_new_tokens=5).token_ids == reference


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ("", ValueError, "empty"),
        ("   \n", ValueError, "empty"),
        ([], ValueError, "empty list"),
        (None, TypeError, "string or a list"),
        (42, TypeError, "string or a list"),
        ({"role": "user", "content": "hi"}, TypeError, "string or a list"),
        ([{"role": "user"}], ValueError, "missing"),
        ([{"role": "user", "content": 3}], TypeError, "content"),
        ([{"role": "user", "content": ["a"]}], TypeError, "content"),
        (["hello"], TypeError, "message 0"),
        ([{"role": "user", "content": "  "}], ValueError, "empty"),
    ],
)
def test_bad_prompt(engine, reference, prompt, error, match):
    with pytest.raises(error, match=match):
        engine.generate(prompt, max_new_tokens=5)
    with pytest.raises(error, match=match):
        engine.stream(prompt, max_new_tokens=5)
    still_usable(engine, reference)


def test_prompt_over_position_limit_names_both_numbers(engine, reference):
    limit = engine.max_positions
    long_prompt = "word " * (limit + 10)
    with pytest.raises(ValueError, match=rf"{limit} positions") as info:
        engine.generate(long_prompt, max_new_tokens=5)
    assert str(len(engine.prepare(long_prompt))) in str(info.value)
    still_usable(engine, reference)


def test_prompt_plus_new_tokens_over_limit(engine):
    limit = engine.max_positions
    tokens = len(engine.prepare("word " * (limit - 20)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate("word " * (limit - 20), max_new_tokens=limit - tokens + 1)


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", None, True])
def test_bad_max_new_tokens(engine, value):
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(PROMPT, max_new_tokens=value)


def test_query_not_found(engine, reference):
    with pytest.raises(ValueError, match="not found in the prompt"):
        engine.generate(PROMPT, query="what colour is the sky?", max_new_tokens=5)
    still_usable(engine, reference)


@pytest.mark.parametrize(("query", "error"), [("", ValueError), ("  ", ValueError), (5, TypeError), (["who"], TypeError)])
def test_bad_query(engine, query, error):
    with pytest.raises(error, match="query"):
        engine.generate(PROMPT, query=query, max_new_tokens=5)


@pytest.mark.parametrize(("chunks", "error", "match"), [("letters", TypeError, "list"), ([3], TypeError, "chunk 0"), (["nowhere"], ValueError, "not found")])
def test_bad_chunks(engine, chunks, error, match):
    with pytest.raises(error, match=match):
        engine.generate(PROMPT, chunks=chunks, max_new_tokens=5)


def test_keep_below_protected_tokens(engine, reference):
    with pytest.raises(ValueError, match="always kept"):
        engine.generate(PROMPT, query="who wrote them?", config=DistillConfig(selection_layers=[2], keep=5), max_new_tokens=5)
    with pytest.raises(ValueError, match="always kept"):
        engine.generate(PROMPT, query="who wrote them?", config=GemFilterConfig(selection_layer=2, keep=2), max_new_tokens=5)
    with pytest.raises(ValueError, match="observation window"):
        engine.generate(PROMPT, config=SnapKVConfig(keep=4, window=8), max_new_tokens=5)
    with pytest.raises(ValueError, match="always kept"):
        engine.generate(PROMPT, query="who wrote them?", config=TruncateConfig(keep=2), max_new_tokens=5)
    still_usable(engine, reference)


@pytest.mark.parametrize(
    "config",
    [
        DistillConfig(selection_layers=[2], keep=0.05, min_keep=1),
        GemFilterConfig(selection_layer=2, keep=0.05, min_keep=1),
        SnapKVConfig(keep=0.05, window=8, min_keep=1),
        TruncateConfig(keep=0.05, min_keep=1),
    ],
)
def test_fractional_keep_yields_to_protected_tokens(engine, config, caplog):
    query = "who wrote them?"
    with caplog.at_level("WARNING", logger="promptdistill_rag"):
        result = engine.generate(PROMPT, query=query, config=config, max_new_tokens=3)
    assert "always kept" in caplog.text
    prepared = engine.prepare(PROMPT, query=query)
    assert result.stats.kept_tokens[-1] > 0.05 * len(prepared)
    if result.stats.kept_indices is not None:
        assert set(range(*prepared.query_span)) <= set(result.stats.kept_indices)


@pytest.mark.parametrize(
    "config",
    [DistillConfig(selection_layers=[2]), GemFilterConfig(selection_layer=2), SnapKVConfig(), TruncateConfig()],
)
def test_short_prompt_runs_whole_with_fractional_keep(engine, reference, config):
    result = engine.generate(PROMPT, config=config, max_new_tokens=5)
    assert result.stats.kept_tokens == [result.stats.prompt_tokens]
    assert result.token_ids == reference


def test_layer_past_depth(engine, reference):
    with pytest.raises(ValueError, match=r"6 decoder layers.*0\.\.5"):
        engine.generate(PROMPT, config=DistillConfig(selection_layers=[6]), max_new_tokens=5)
    with pytest.raises(ValueError, match="strictly ascending"):
        engine.generate(PROMPT, config=DistillConfig(selection_layers=[3, 1]), max_new_tokens=5)
    with pytest.raises(ValueError, match="selection_layers"):
        PromptDistillEngine(engine.model, engine.tokenizer, config=DistillConfig(selection_layers=[40]))
    still_usable(engine, reference)


def test_config_wrong_type(engine):
    with pytest.raises(TypeError, match="config"):
        engine.generate(PROMPT, config="promptdistill", max_new_tokens=5)
    with pytest.raises(ValueError, match="keep"):
        engine.generate(PROMPT, config={"method": "promptdistill", "keep": 0}, max_new_tokens=5)


def test_messages_without_chat_template(engine):
    tokenizer = default_tokenizer()
    bare = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    plain = PromptDistillEngine(engine.model, bare)
    with pytest.raises(ValueError, match="no chat template"):
        plain.generate([{"role": "user", "content": "hi"}], max_new_tokens=3)
    assert plain.generate("hi there", config=FullConfig(), max_new_tokens=3).stats.generated_tokens >= 1


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(default_tokenizer())))
    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*Llama.*Gemma 3"):
        PromptDistillEngine(model, default_tokenizer())


def test_unsupported_attention_implementation():
    model = tiny_model("llama")
    model.config._attn_implementation_internal = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation"):
        PromptDistillEngine(model, default_tokenizer())


def test_wrong_model_and_tokenizer_types():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        PromptDistillEngine("llama", default_tokenizer())
    with pytest.raises(TypeError, match="tokenizer"):
        PromptDistillEngine(tiny_model("llama"), "tokenizer")


def test_from_pretrained_checks_architecture_before_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not supported"):
        PromptDistillEngine.from_pretrained(tmp_path)


def test_error_inside_forward_leaves_engine_usable(engine, reference):
    layer = engine.runner.layers[3]

    def explode(module, args, output):
        raise RuntimeError("boom")

    handle = layer.register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            engine.generate(PROMPT, config=DistillConfig(selection_layers=[1], keep=10, sink_tokens=1, protected_suffix=1), max_new_tokens=5)
    finally:
        handle.remove()
    assert engine.model.config._attn_implementation == "sdpa"
    still_usable(engine, reference)


def test_threads_share_engine_safely(engine):
    prompts = [PROMPT, "A different story about ships and their captains. Question: who sails?"]
    configs = [FullConfig(), DistillConfig(selection_layers=[2], keep=12, sink_tokens=1, protected_suffix=2)]
    expected = {(p, i): engine.generate(p, config=c, max_new_tokens=8).token_ids for p in prompts for i, c in enumerate(configs)}
    results = {}
    errors = []

    def work(prompt, index):
        try:
            for _ in range(3):
                results.setdefault((prompt, index), []).append(
                    engine.generate(prompt, config=configs[index], max_new_tokens=8).token_ids
                )
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(p, i)) for p in prompts for i in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for key, runs in results.items():
        assert all(run == expected[key] for run in runs), key
