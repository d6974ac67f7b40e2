"""With nothing dropped, every method must reproduce model.generate token for token."""

import pytest
import torch

from promptdistill_rag import DistillConfig, FullConfig, GemFilterConfig, H2OConfig, SnapKVConfig, TruncateConfig

PROMPT = (
    "Alpha beta gamma delta. The tower stands by the river and the bell rings at noon. "
    "Children walk to school along the old road. " * 3
    + "Question: when does the bell ring?"
)
NEW_TOKENS = 10

NO_OP_CONFIGS = {
    "full": FullConfig(),
    "promptdistill": DistillConfig(selection_layers=[1, 3], keep=[10_000, 10_000]),
    "promptdistill_fraction": DistillConfig(selection_layers=[2], keep=1.0),
    "gemfilter": GemFilterConfig(selection_layer=2, keep=10_000),
    "snapkv": SnapKVConfig(keep=10_000),
    "h2o": H2OConfig(keep=10_000),
    "truncate": TruncateConfig(keep=1.0),
}


def reference_ids(engine, prompt):
    """Greedy tokens from transformers' own generate, cut at the first EOS."""
    input_ids = torch.tensor([engine.prepare(prompt).input_ids])
    output = engine.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=engine.tokenizer.eos_token_id,
    )
    tokens = output[0, input_ids.shape[1] :].tolist()
    for index, token in enumerate(tokens):
        if token in engine.eos_token_ids:
            return tokens[:index]
    return tokens


@pytest.fixture(scope="module")
def references(tiny):
    return reference_ids(tiny, PROMPT)


@pytest.mark.parametrize("name", sorted(NO_OP_CONFIGS))
def test_generate_equals_transformers(tiny, references, name):
    result = tiny.generate(PROMPT, config=NO_OP_CONFIGS[name], max_new_tokens=NEW_TOKENS)
    assert result.token_ids == references
    assert result.stats.prompt_tokens == result.stats.kept_tokens[0]


@pytest.mark.parametrize("name", sorted(NO_OP_CONFIGS))
def test_stream_equals_generate(tiny, references, name):
    config = NO_OP_CONFIGS[name]
    stream = tiny.stream(PROMPT, config=config, max_new_tokens=NEW_TOKENS)
    pieces = list(stream)
    assert stream.result is not None
    assert stream.result.token_ids == references
    assert "".join(pieces) == stream.result.text
    assert stream.result.text == tiny.tokenizer.decode(references, skip_special_tokens=True)


def test_chat_prompt_equals_transformers(tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    input_ids = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert tiny.prepare(messages).input_ids == input_ids[0].tolist()
    output = tiny.model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS, do_sample=False,
        pad_token_id=tiny.tokenizer.eos_token_id,
    )
    expected = output[0, input_ids.shape[1] :].tolist()
    expected = expected[: next((i for i, t in enumerate(expected) if t in tiny.eos_token_ids), len(expected))]
    assert tiny.generate(messages, config=FullConfig(), max_new_tokens=NEW_TOKENS).token_ids == expected


def test_selection_at_last_layer_without_truncation_equals_full(tiny, references):
    """Dropping hidden states after the last layer changes nothing the model reads later."""
    length = len(tiny.prepare(PROMPT))
    config = DistillConfig(selection_layers=[-1], keep=length // 2, truncate_cache=False, sink_tokens=1)
    result = tiny.generate(PROMPT, config=config, max_new_tokens=NEW_TOKENS)
    assert result.stats.kept_tokens == [length // 2]
    assert result.token_ids == references
