"""Decoding: stop strings, EOS, sampling, streaming pieces and the text assembler."""

import pytest
import torch

from promptdistill_rag import FullConfig
from promptdistill_rag.generation import SamplingParams, TextAssembler, normalize_stop
from promptdistill_rag.testing import default_tokenizer, tiny_engine

PROMPT = "Once upon a time there was a lighthouse by the sea, and every night its keeper"


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("llama")


def test_stop_string_cuts_text(engine):
    full = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=20)
    assert len(full.text) > 6
    stop = full.text[3:6]
    result = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=20, stop=[stop])
    assert result.text == full.text[: full.text.index(stop)]
    assert result.stats.finish_reason == "stop"
    assert stop not in result.text


def test_stop_string_in_stream(engine):
    full = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=20)
    stop = full.text[5:9]
    stream = engine.stream(PROMPT, config=FullConfig(), max_new_tokens=20, stop=stop)
    pieces = list(stream)
    assert "".join(pieces) == full.text[: full.text.index(stop)]
    assert all(stop not in piece for piece in pieces)


def test_every_eos_id_ends_generation(engine):
    full = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=12)
    third = full.token_ids[2]
    original = engine.eos_token_ids
    engine.eos_token_ids = frozenset({999_999, third})
    try:
        result = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=12)
    finally:
        engine.eos_token_ids = original
    assert result.token_ids == full.token_ids[: full.token_ids.index(third)]
    assert result.stats.finish_reason == "stop"


def test_length_finish_reason(engine):
    result = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=3)
    assert result.stats.generated_tokens == len(result.token_ids) == 3
    assert result.stats.finish_reason == "length"


def test_sampling_with_seed_is_reproducible(engine):
    first = engine.generate(PROMPT, max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    second = engine.generate(PROMPT, max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    assert first.token_ids == second.token_ids


def test_sampling_differs_from_greedy_somewhere(engine):
    greedy = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=8).token_ids
    samples = {tuple(engine.generate(PROMPT, config=FullConfig(), max_new_tokens=8, temperature=1.5, seed=s).token_ids) for s in range(4)}
    assert any(list(sample) != greedy for sample in samples)


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=8).token_ids
    sampled = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=8, temperature=0.7, top_k=1, seed=3).token_ids
    assert sampled == greedy


def test_stream_result_stats(engine):
    stream = engine.stream(PROMPT, max_new_tokens=6)
    assert stream.result is None
    text = "".join(stream)
    assert stream.result.text == text
    assert stream.result.stats.prefill_seconds > 0
    assert stream.result.stats.kv_cache_bytes > 0


def test_stream_close_frees_engine(engine):
    stream = engine.stream(PROMPT, config=FullConfig(), max_new_tokens=30)
    next(stream)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    assert engine.generate(PROMPT, config=FullConfig(), max_new_tokens=3).stats.generated_tokens == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_sampling_params_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_normalize_stop():
    assert normalize_stop(None) == ()
    assert normalize_stop("x") == ("x",)
    with pytest.raises(ValueError, match="empty"):
        normalize_stop([""])
    with pytest.raises(TypeError, match="strings"):
        normalize_stop([3])


def test_assembler_holds_incomplete_characters():
    tokenizer = default_tokenizer()
    ids = tokenizer("café ☕ naïve", add_special_tokens=False).input_ids
    assembler = TextAssembler(tokenizer)
    pieces = [assembler.add(token) for token in ids]
    pieces.append(assembler.finish())
    assert "".join(pieces) == "café ☕ naïve"
    assert all("\ufffd" not in piece for piece in pieces)


def test_assembler_holds_stop_prefix():
    tokenizer = default_tokenizer()
    ids = tokenizer("alpha beta STOP gamma", add_special_tokens=False).input_ids
    assembler = TextAssembler(tokenizer, ("STOP",))
    pieces = []
    for token in ids:
        pieces.append(assembler.add(token))
        if assembler.stopped:
            break
    pieces.append(assembler.finish())
    assert "".join(pieces) == "alpha beta "
    assert assembler.stopped
