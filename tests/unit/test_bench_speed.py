"""The speed benchmark: ideal prefill model, length clipping, selection timing, memory meter, random weights."""

import json
import logging
import time

import pytest
import torch

from promptdistill_rag import DistillConfig
from promptdistill_rag.bench import memory
from promptdistill_rag.bench.memory import PeakMemoryMeter
from promptdistill_rag.bench.models import random_weight_engine
from promptdistill_rag.bench.needle import load_haystack
from promptdistill_rag.bench.plots import speed_chart
from promptdistill_rag.bench.presets import bench_configs
from promptdistill_rag.bench.speed import clip_lengths, ideal_prefill_seconds, run_speed, speed_summary, speed_table


def linear_cost(tokens):
    return tokens / 100


@pytest.mark.parametrize(
    ("method", "layers", "kept", "expected"),
    [
        ("full", [], [1000], 30 * 10.0),
        ("snapkv", [], [250], 30 * 10.0),
        ("h2o", [], [250], 30 * 10.0),
        ("truncate", [], [250], 30 * 2.5),
        ("gemfilter", [14], [250], 15 * 10.0 + 30 * 2.5),
        ("gemfilter", [], [1000], 30 * 10.0),
        ("promptdistill", [14], [250], 15 * 10.0 + 15 * 2.5),
        ("promptdistill", [9, 19], [500, 250], 10 * 10.0 + 10 * 5.0 + 10 * 2.5),
        ("promptdistill", [], [1000], 30 * 10.0),
    ],
)
def test_ideal_prefill_formula(method, layers, kept, expected):
    assert ideal_prefill_seconds(method, 1000, layers, kept, 30, linear_cost) == pytest.approx(expected)


def test_ideal_prefill_unknown_method():
    assert ideal_prefill_seconds("streamingllm", 1000, [], [1000], 30, linear_cost) is None


def test_clip_lengths_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="promptdistill_rag.bench.speed"):
        lengths = clip_lengths([1024, 8192, 9000], 8192, 16)
    assert lengths == [1024, 8176]
    assert "measuring 8176 instead" in caplog.text


def test_clip_lengths_without_limit():
    assert clip_lengths([512, 512, 64], None, 16) == [512, 64]


@pytest.mark.parametrize(("lengths", "match"), [([], "no length"), ([0], "positive"), ([100], "no room")])
def test_clip_lengths_rejects(lengths, match):
    with pytest.raises(ValueError, match=match):
        clip_lengths(lengths, 16, 16)


def test_cpu_peak_memory_sees_allocation():
    meter = PeakMemoryMeter(torch.device("cpu"))
    with meter.measure() as measured:
        block = torch.ones(16 * 2**20 // 4)
        block += 1
    del block
    assert measured.source in ("proc_vmhwm", "psutil_sampling")
    assert measured.growth_bytes >= 12 * 2**20
    assert measured.peak_bytes >= measured.baseline_bytes


def test_sampling_fallback_sees_allocation(monkeypatch):
    pytest.importorskip("psutil")
    monkeypatch.setattr(memory, "_can_reset_peak_rss", lambda: False)
    meter = PeakMemoryMeter(torch.device("cpu"))
    assert meter.source == "psutil_sampling"
    with meter.measure() as measured:
        block = torch.ones(32 * 2**20 // 4)
        block += 1
        # Hold the block for a few sampling periods.
        time.sleep(0.02)
    del block
    assert measured.growth_bytes >= 24 * 2**20


def test_sampling_fallback_needs_psutil(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(memory, "_can_reset_peak_rss", lambda: False)
    monkeypatch.setattr(builtins, "__import__", no_psutil)
    with pytest.raises(ImportError, match=r"pip install \"promptdistill-rag\[bench\]\""):
        PeakMemoryMeter(torch.device("cpu"))


@pytest.fixture(scope="module")
def speed_result(llama_engine):
    configs = bench_configs(
        ["promptdistill", "gemfilter", "h2o", "truncate"],
        [0.5],
        DistillConfig(selection_layers=[2], min_keep=1),
        variants={"late": {"selection_layers": [3]}},
    )
    rows, costs = run_speed(
        llama_engine,
        configs,
        lengths=[200, 260],
        haystack=load_haystack(None),
        warmup=1,
        repeats=2,
        decode_tokens=3,
        progress=False,
    )
    return configs, rows, costs


def test_speed_rows_per_repeat(speed_result):
    configs, rows, _ = speed_result
    assert len(rows) == 2 * len(configs) * 2
    for row in rows:
        assert row["prefill_seconds"] > 0
        assert row["decode_tokens"] == 3
        assert row["decode_seconds_per_token"] == pytest.approx(row["decode_seconds"] / 3)
        assert row["kv_cache_bytes"] > 0
        assert row["peak_memory_growth_bytes"] >= 0
        assert row["repeat"] in (0, 1)


def test_speed_selection_time_only_where_selecting(speed_result):
    _, rows, _ = speed_result
    for row in rows:
        if row["method"] in ("promptdistill", "gemfilter", "h2o"):
            assert row["selection_seconds"] > 0
        assert row["selection_seconds"] < row["prefill_seconds"]


def test_speed_cache_smaller_with_selection(speed_result):
    _, rows, _ = speed_result
    full = next(row for row in rows if row["method"] == "full" and row["length"] == 260)
    distill = next(row for row in rows if row["method"] == "promptdistill" and row["length"] == 260)
    assert distill["kv_cache_bytes"] < full["kv_cache_bytes"]
    assert distill["kept_tokens"] == [(distill["prompt_tokens"] + 1) // 2]


def test_layer_costs_cover_kept_counts(speed_result, llama_engine):
    _, rows, costs = speed_result
    measured = {(cost["length"], cost["tokens"]) for cost in costs}
    for row in rows:
        assert (row["length"], row["prompt_tokens"]) in measured
        if row["method"] in ("promptdistill", "gemfilter", "truncate"):
            assert (row["length"], row["kept_tokens"][-1]) in measured
    for cost in costs:
        assert cost["layer_seconds"] == pytest.approx(cost["full_prefill_seconds_median"] / llama_engine.num_layers)


def test_speed_summary_and_table(speed_result, llama_engine, tmp_path):
    configs, rows, costs = speed_result
    summary = speed_summary(rows, costs, llama_engine.num_layers)
    assert len(summary) == 2 * len(configs)
    for entry in summary:
        assert entry["prefill_seconds_min"] <= entry["prefill_seconds_median"] <= entry["prefill_seconds_max"]
        assert entry["ideal_prefill_seconds"] > 0
        assert entry["measured_over_ideal"] > 0
        assert entry["memory_source"] in ("proc_vmhwm", "psutil_sampling")
    full = [entry for entry in summary if entry["method"] == "full"]
    for entry in full:
        assert entry["prefill_vs_full"] == 1.0
        assert entry["measured_over_ideal"] == pytest.approx(1.0)
    json.dumps(summary)
    table = speed_table(summary)
    assert "meas/ideal" in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + len(summary)
    assert speed_chart(summary, tmp_path).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"repeats": 0}, "--repeats"), ({"warmup": -1}, "--warmup"), ({"decode_tokens": 0}, "--decode-tokens")],
)
def test_speed_rejects_bad_counts(llama_engine, kwargs, match):
    configs = bench_configs(["truncate"], [0.5], DistillConfig())
    with pytest.raises(ValueError, match=match):
        run_speed(llama_engine, configs, lengths=[200], haystack="text", **kwargs)


def test_random_weights_from_config_json(tmp_path, llama_engine):
    # A vocabulary smaller than the tokenizer's: ids must be clipped, not crash the embedding.
    values = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))

    engine = random_weight_engine(config_json=str(path))
    assert engine.num_layers == 3
    assert engine.model.get_input_embeddings().num_embeddings == 1000
    assert "random weights" in engine.model_name

    configs = bench_configs(["promptdistill"], [0.5], DistillConfig(selection_layers=[1]))
    rows, _ = run_speed(
        engine,
        configs,
        lengths=[600],
        haystack=load_haystack(None),
        warmup=0,
        repeats=1,
        decode_tokens=2,
        progress=False,
    )
    assert rows[0]["prompt_tokens"] + 2 <= 512
    assert len(rows) == 2


def test_random_weights_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config-json"):
        random_weight_engine(config_json=str(tmp_path / "absent.json"))


def test_random_weights_unsupported_architecture(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ValueError, match="not supported"):
        random_weight_engine(config_json=str(path))


def test_speed_table_names_variants(speed_result, llama_engine):
    _, rows, costs = speed_result
    table = speed_table(speed_summary(rows, costs, llama_engine.num_layers))
    methods = [line.split()[1] for line in table.splitlines()[2:]]
    assert "promptdistill/late" in methods
    assert methods.count("promptdistill") == 2
