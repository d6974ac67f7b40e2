"""Selected indices, KV contents and logits checked against references computed here, not by the engine."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import DynamicCache
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from promptdistill_rag import DistillConfig, GemFilterConfig, H2OConfig, SnapKVConfig
from promptdistill_rag.testing import tiny_engine

PROMPT = (
    "The lighthouse keeper counted ships every night. A storm broke the northern pier in March. "
    "Fishermen repaired their nets by the harbour wall. The secret number of the keeper is 4096. "
    "Gulls slept on the roofs of the warehouses until dawn. " * 2
    + "Question: what is the secret number?"
)
QUERY = "what is the secret number?"

_CAPTURED: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    _CAPTURED[module.layer_idx] = (query.detach().clone(), key.detach().clone(), value.detach().clone())
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("test_capture", _capture_attention)
AttentionMaskInterface.register("test_capture", AttentionMaskInterface._global_mapping["sdpa"])


@contextlib.contextmanager
def capturing(model):
    """Record every layer's query, key and value states while the block runs the plain model."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation_internal")}
    previous = {key: config._attn_implementation_internal for key, config in configs.items()}
    _CAPTURED.clear()
    try:
        for config in configs.values():
            config._attn_implementation_internal = "test_capture"
        yield _CAPTURED
    finally:
        for key, config in configs.items():
            config._attn_implementation_internal = previous[key]


def reference_token_scores(query, key, rows, scaling, signal="softmax", head_reduction="mean"):
    """Mean over the given rows (each seeing keys up to itself) of the head-reduced attention."""
    heads, kv_heads = query.shape[1], key.shape[1]
    keys = key[0].repeat_interleave(heads // kv_heads, dim=0).double()  # (heads, n, d)
    length = keys.shape[1]
    total = [0.0] * length
    count = [0] * length
    for row in rows:
        logits = torch.einsum("hd,hnd->hn", query[0, :, row, :].double(), keys[:, : row + 1, :]) * scaling
        values = torch.softmax(logits, dim=-1) if signal == "softmax" else logits
        reduced = values.max(dim=0).values if head_reduction == "max" else values.mean(dim=0)
        for index in range(row + 1):
            total[index] += float(reduced[index])
            count[index] += 1
    return [t / c for t, c in zip(total, count)]


def reference_query_scores(engine, prepared, input_ids, layer, head_reduction):
    """Score every prompt token by the query rows' attention at ``layer``, from the model's own captured states."""
    with capturing(engine.model) as capture, torch.inference_mode():
        engine.model(input_ids)
        query, key, _ = capture[layer]
    scaling = engine.model.get_decoder().layers[layer].self_attn.scaling
    rows = sorted(set(range(*prepared.query_span)) | {len(prepared) - 1})
    return reference_token_scores(query, key, rows, scaling, head_reduction=head_reduction)


def reference_pool(scores, kernel):
    half = kernel // 2
    return [sum(scores[max(0, i - half) : i + half + 1]) / len(scores[max(0, i - half) : i + half + 1]) for i in range(len(scores))]


def reference_top(scores, keep, protected):
    order = sorted(range(len(scores)), key=lambda i: (not protected[i], -scores[i], i))
    return sorted(order[:keep])


def protected_mask(length, query_span, sink, suffix):
    mask = [i < sink or i >= length - suffix for i in range(length)]
    if query_span is not None:
        for i in range(*query_span):
            mask[i] = True
    return mask


def hand_run(model, input_ids, stages, capture):
    """Run the decoder layers by hand: full prompt up to each selection layer, then the kept tokens at their original positions.

    ``stages`` maps a layer to a function that, given the captured (query, key)
    of that layer for the current tokens, returns kept indices (into the current tokens).
    Returns the last token's logits, the kept original indices and each layer's (key, value) for the tokens it saw.
    """
    inner = model.get_decoder()
    hidden = inner.embed_tokens(input_ids)
    length = input_ids.shape[1]
    current = torch.arange(length)
    full_positions = current.view(1, -1)
    layer_types = getattr(model.config, "layer_types", None)
    window = getattr(model.config, "sliding_window", None)
    if layer_types is None:
        types = ["full_attention"] * len(inner.layers)
    else:
        types = list(layer_types)
    embeddings = {}
    per_type_rope = isinstance(getattr(inner.rotary_emb, "rope_type", None), dict)
    for layer_type in set(types):
        if per_type_rope:
            embeddings[layer_type] = inner.rotary_emb(hidden, full_positions, layer_type)
        else:
            embeddings[layer_type] = inner.rotary_emb(hidden, full_positions)
    states = []
    for index, layer in enumerate(inner.layers):
        positions = current
        allowed = positions.view(1, -1) <= positions.view(-1, 1)
        if types[index] == "sliding_attention":
            allowed = allowed & (positions.view(-1, 1) - positions.view(1, -1) < window)
        cos, sin = embeddings[types[index]]
        hidden = layer(
            hidden,
            attention_mask=allowed.view(1, 1, len(positions), len(positions)),
            position_embeddings=(cos[:, current], sin[:, current]),
            position_ids=current.view(1, -1),
        )
        _, key, value = capture[index]
        states.append((key, value, current.clone()))
        if index in stages:
            query, key, _ = capture[index]
            kept = torch.tensor(stages[index](query, key))
            hidden = hidden[:, kept]
            current = current[kept]
    hidden = inner.norm(hidden)
    logits = model.lm_head(hidden)[0, -1].float()
    return logits, current, states


def engine_prefill(engine, config, prompt=PROMPT, query=QUERY):
    prepared = engine.prepare(prompt, query=query)
    input_ids = torch.tensor([prepared.input_ids])
    method = engine.method_for(config)
    return prepared, input_ids, method.prefill(prepared, input_ids)


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3_text"])
def engine(request):
    return tiny_engine(request.param, num_hidden_layers=6)


@pytest.mark.parametrize(
    ("selector", "signal", "head_reduction"),
    [("query", "softmax", "mean"), ("last_token", "logits", "mean"), ("query", "softmax", "max"), ("last_token", "softmax", "mean")],
)
def test_selected_indices_match_reference(engine, selector, signal, head_reduction):
    layer, keep = 2, 40
    config = DistillConfig(
        selection_layers=[layer], keep=keep, selector=selector, signal=signal, head_reduction=head_reduction,
        sink_tokens=2, protected_suffix=3, granularity="token",
    )
    prepared, input_ids, result = engine_prefill(engine, config)
    length = len(prepared)
    with capturing(engine.model) as capture, torch.inference_mode():
        engine.model(input_ids)
        query, key, _ = capture[layer]
    scaling = engine.model.get_decoder().layers[layer].self_attn.scaling
    rows = [length - 1] if selector == "last_token" else sorted(set(range(*prepared.query_span)) | {length - 1})
    scores = reference_pool(reference_token_scores(query, key, rows, scaling, signal, head_reduction), 5)
    expected = reference_top(scores, keep, protected_mask(length, prepared.query_span, 2, 3))
    assert result.kept_indices == expected
    assert result.query_source == ("query" if selector == "query" else "last_token")


@pytest.mark.parametrize(("head_reduction", "unit_reduction"), [("mean", "mean"), ("max", "max")])
def test_sentence_units_match_reference(engine, head_reduction, unit_reduction):
    layer, keep = 2, 50
    config = DistillConfig(
        selection_layers=[layer], keep=keep, granularity="sentence", sink_tokens=1, protected_suffix=2,
        head_reduction=head_reduction, unit_reduction=unit_reduction,
    )
    prepared, input_ids, result = engine_prefill(engine, config)
    length = len(prepared)
    scores = reference_query_scores(engine, prepared, input_ids, layer, head_reduction)
    units = prepared.sentence_ids()
    means = {}
    for unit in set(units):
        members = [scores[i] for i in range(length) if units[i] == unit]
        means[unit] = max(members) if unit_reduction == "max" else sum(members) / len(members)
    protected = protected_mask(length, prepared.query_span, 1, 2)
    order = sorted(range(length), key=lambda i: (not protected[i], -means[units[i]], -scores[i], i))
    expected = sorted(order[:keep])
    assert result.kept_indices == expected
    # Whole sentences survive, except at most one cut at the budget's edge.
    kept = set(expected)
    partial = [u for u in set(units) if 0 < sum(1 for i in range(length) if units[i] == u and i in kept) < units.count(u)]
    partial = [u for u in partial if not any(protected[i] for i in range(length) if units[i] == u)]
    assert len(partial) <= 1


def test_logits_after_dropping_match_hand_run(engine):
    layers, keeps = [1, 3], [60, 35]
    config = DistillConfig(
        selection_layers=layers, keep=keeps, sink_tokens=2, protected_suffix=2, granularity="token", head_reduction="mean"
    )
    prepared, input_ids, result = engine_prefill(engine, config)
    length = len(prepared)
    protected_original = protected_mask(length, prepared.query_span, 2, 2)
    query_rows_original = sorted(set(range(*prepared.query_span)))
    state = {"current": list(range(length))}

    def stage(keep):
        def choose(query, key):
            current = state["current"]
            rows = sorted({current.index(r) for r in query_rows_original} | {len(current) - 1})
            scores = reference_pool(reference_token_scores(query, key, rows, scaling), 5)
            protected = [protected_original[i] for i in current]
            chosen = reference_top(scores, keep, protected)
            state["current"] = [current[i] for i in chosen]
            return chosen

        return choose

    scaling = engine.model.get_decoder().layers[0].self_attn.scaling
    with capturing(engine.model) as capture, torch.inference_mode():
        logits, kept, _ = hand_run(engine.model, input_ids, {layers[0]: stage(keeps[0]), layers[1]: stage(keeps[1])}, capture)
    assert result.kept_indices == kept.tolist()
    assert result.kept_tokens == keeps
    torch.testing.assert_close(result.logits[0], logits, rtol=1e-4, atol=1e-4)


def test_kv_shapes_after_multi_stage():
    engine = tiny_engine("llama", num_hidden_layers=6)
    for truncate, expected in [(True, [30] * 6), (False, [None, None, 50, 50, 30, 30])]:
        config = DistillConfig(selection_layers=[1, 3], keep=[50, 30], truncate_cache=truncate, sink_tokens=1, protected_suffix=1)
        prepared, _, result = engine_prefill(engine, config)
        lengths = [layer.keys.shape[-2] for layer in result.state.cache.layers]
        expected = [len(prepared) if e is None else e for e in expected]
        assert lengths == expected, f"truncate_cache={truncate}"
        for layer in result.state.cache.layers:
            assert layer.keys.shape[1] == engine.model.config.num_key_value_heads


def test_decode_step_matches_hand_run():
    engine = tiny_engine("llama", num_hidden_layers=5)
    layer, keep = 2, 45
    config = DistillConfig(selection_layers=[layer], keep=keep, truncate_cache=True, sink_tokens=1, protected_suffix=1)
    prepared, input_ids, result = engine_prefill(engine, config)
    length = len(prepared)
    kept = torch.tensor(result.kept_indices)
    with capturing(engine.model) as capture, torch.inference_mode():
        _, _, states = hand_run(engine.model, input_ids, {layer: lambda q, k: kept.tolist()}, capture)
    # A cache holding, per layer, the kept tokens' keys and values.
    cache = DynamicCache()
    for index, (key, value, seen) in enumerate(states):
        where = torch.tensor([seen.tolist().index(i) for i in kept.tolist()])
        cache.update(key[:, :, where], value[:, :, where], index)
    token = torch.tensor([[int(result.logits.argmax())]])
    with torch.inference_mode():
        expected = engine.model(input_ids=token, position_ids=torch.tensor([[length]]), cache=cache, use_cache=True).logits[0, -1]
        state = result.state
        state.query_positions = torch.tensor([length])
        actual = engine.runner.forward(token, torch.tensor([[length]]), state)[0]
    torch.testing.assert_close(actual, expected.float(), rtol=1e-4, atol=1e-4)


def test_gemfilter_indices_match_reference(engine):
    layer, keep = 3, 40
    prepared, input_ids, result = engine_prefill(engine, GemFilterConfig(selection_layer=layer, keep=keep))
    length = len(prepared)
    with capturing(engine.model) as capture, torch.inference_mode():
        engine.model(input_ids)
        query, key, _ = capture[layer]
    scaling = engine.model.get_decoder().layers[layer].self_attn.scaling
    heads = query.shape[1]
    keys = key[0].repeat_interleave(heads // key.shape[1], dim=0).double()
    logits = torch.einsum("hd,hnd->hn", query[0, :, -1, :].double(), keys) * scaling
    summed = logits.sum(dim=0).tolist()
    scores = reference_pool(summed, 5)
    expected = reference_top(scores, keep, protected_mask(length, prepared.query_span, 0, 1))
    assert result.kept_indices == expected
    assert result.next_position == keep


def snapkv_reference(probabilities, keep, window, kv_heads):
    """Per KV head, the kept entry indices from one layer's (heads, n, n) attention probabilities."""
    heads, _, length = probabilities.shape
    groups = heads // kv_heads
    summed = probabilities[:, length - window :, :].sum(dim=1)  # (heads, n)
    per_kv = summed.view(kv_heads, groups, length).sum(dim=1)
    result = []
    for head in range(kv_heads):
        scores = reference_pool(per_kv[head, : length - window].tolist(), 5)
        top = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: keep - window]
        result.append(sorted(top) + list(range(length - window, length)))
    return result


def test_snapkv_entries_match_reference():
    engine = tiny_engine("llama", num_hidden_layers=4, attn_implementation="eager")
    keep, window = 40, 8
    prepared, input_ids, result = engine_prefill(engine, SnapKVConfig(keep=keep, window=window))
    with torch.inference_mode():
        full = engine.model(input_ids, output_attentions=True, use_cache=True)
    kv_heads = engine.model.config.num_key_value_heads
    for layer in range(engine.num_layers):
        expected = snapkv_reference(full.attentions[layer][0].float(), keep, window, kv_heads)
        full_keys = full.cache.layers[layer].keys
        actual_keys = result.state.cache.layers[layer].keys
        assert actual_keys.shape == (1, kv_heads, keep, full_keys.shape[-1])
        for head in range(kv_heads):
            torch.testing.assert_close(actual_keys[0, head], full_keys[0, head, expected[head]], rtol=1e-5, atol=1e-5)
            assert result.state.entry_positions[layer][head].tolist() == expected[head]


def test_h2o_cache_stays_within_budget():
    engine = tiny_engine("llama", num_hidden_layers=4)
    keep = 24
    prepared, input_ids, result = engine_prefill(engine, H2OConfig(keep=keep, recent_fraction=0.25))
    state = result.state
    length = len(prepared)
    token = result.logits.argmax(dim=-1)
    for step in range(20):
        lengths = {layer.keys.shape[-2] for layer in state.cache.layers}
        assert lengths == {keep}, f"step {step}"
        position = torch.tensor([[length + step]])
        state.query_positions = position.view(-1)
        logits = engine.runner.forward(token.view(1, 1), position, state)
        token = logits.argmax(dim=-1)
        # The newest token is always among the recent entries it keeps.
        for positions in state.entry_positions:
            assert int(positions.max()) == length + step
    assert {layer.keys.shape[-2] for layer in state.cache.layers} == {keep}


@pytest.mark.parametrize(
    ("config", "start"),
    [
        (DistillConfig(selection_layers=[2], keep=40, sink_tokens=1, protected_suffix=1), "prompt"),
        (GemFilterConfig(selection_layer=2, keep=40), "keep"),
        (H2OConfig(keep=30), "prompt"),
        (SnapKVConfig(keep=30, window=4), "prompt"),
    ],
)
def test_decode_positions_continue(config, start):
    engine = tiny_engine("llama", num_hidden_layers=4)
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["position_ids"].view(-1).tolist())

    handle = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = engine.generate(PROMPT, query=QUERY, config=config, max_new_tokens=5)
    finally:
        handle.remove()
    length = result.stats.prompt_tokens
    first = length if start == "prompt" else 40
    decode_positions = [positions[0] for positions in seen if len(positions) == 1]
    assert decode_positions == list(range(first, first + len(decode_positions)))
    assert len(decode_positions) == result.stats.generated_tokens - 1 or result.stats.finish_reason == "stop"


def test_chunk_units_match_reference(engine):
    """Caller chunks are ranked whole by their best token; other tokens form sentence units."""
    layer, keep = 3, 60
    chunks = ["A storm broke the northern pier in March.", "The secret number of the keeper is 4096.", "Fishermen repaired their nets by the harbour wall."]
    config = DistillConfig(selection_layers=[layer], keep=keep, granularity="chunk", sink_tokens=1, protected_suffix=2)
    prepared = engine.prepare(PROMPT, query=QUERY, chunks=chunks)
    input_ids = torch.tensor([prepared.input_ids])
    result = engine.method_for(config).prefill(prepared, input_ids)
    length = len(prepared)
    scores = reference_query_scores(engine, prepared, input_ids, layer, "max")
    sentence = prepared.sentence_ids()
    units = []
    for token in range(length):
        inside = [i for i, (start, end) in enumerate(prepared.chunk_spans) if start <= token < end]
        units.append(("chunk", inside[0]) if inside else ("sentence", sentence[token]))
    best = {unit: max(scores[i] for i in range(length) if units[i] == unit) for unit in set(units)}
    protected = protected_mask(length, prepared.query_span, 1, 2)
    order = sorted(range(length), key=lambda i: (not protected[i], -best[units[i]], -scores[i], i))
    assert result.kept_indices == sorted(order[:keep])
