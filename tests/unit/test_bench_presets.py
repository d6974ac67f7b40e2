"""Benchmark method presets, budgets, and the answer scorers."""

import pytest

from promptdistill_rag import METHOD_NAMES, DistillConfig, FullConfig, GemFilterConfig
from promptdistill_rag.bench.needle import needle_score
from promptdistill_rag.bench.presets import PRESETS, BenchConfig, bench_configs, format_keep, select_methods
from promptdistill_rag.bench.rag import is_correct, normalize_answer


def test_registry_covers_every_method():
    assert list(PRESETS) == list(METHOD_NAMES)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.description


def test_full_runs_once_and_first():
    configs = bench_configs(["truncate", "snapkv"], [0.25, 0.5], DistillConfig())
    labels = [config.label for config in configs]
    assert labels == ["full", "truncate@0.25", "truncate@0.5", "snapkv@0.25", "snapkv@0.5"]
    assert isinstance(configs[0].config, FullConfig)
    assert configs[0].keep is None


def test_all_methods_by_default():
    configs = bench_configs(None, [0.25], DistillConfig())
    assert [config.method for config in configs] == list(METHOD_NAMES)


def test_full_in_methods_is_not_repeated():
    assert select_methods(["full", "h2o", "h2o", "full"]) == ["full", "h2o"]


def test_promptdistill_preset_keeps_base_fields():
    base = DistillConfig(selection_layers=[12], keep=[0.3], granularity="chunk", head_reduction="max")
    config = PRESETS["promptdistill"].build(0.1, base)
    assert config.keep == (0.1,)
    assert config.selection_layers == (12,)
    assert config.granularity == "chunk"
    assert config.head_reduction == "max"


def test_promptdistill_preset_multistage_budget():
    base = DistillConfig(selection_layers=[8, 18], keep=[0.5, 0.25])
    assert PRESETS["promptdistill"].build(0.1, base).keep == (0.5, 0.1)
    # An earlier stage may not keep less than the budget, nor mix counts with fractions.
    assert PRESETS["promptdistill"].build(0.6, base).keep == (0.6, 0.6)
    assert PRESETS["promptdistill"].build(300, base).keep == (300, 300)


def test_gemfilter_selects_at_promptdistill_layer():
    base = DistillConfig(selection_layers=[0.3, 0.6], keep=[0.5, 0.25])
    config = PRESETS["gemfilter"].build(256, base)
    assert isinstance(config, GemFilterConfig)
    assert config.selection_layer == 0.6
    assert config.keep == 256


@pytest.mark.parametrize("method", ["snapkv", "h2o", "truncate"])
def test_keep_only_presets(method):
    config = PRESETS[method].build(0.2, DistillConfig())
    assert config.method == method
    assert config.keep == 0.2


@pytest.mark.parametrize("method", ["promptdistill", "gemfilter", "snapkv", "h2o", "truncate"])
def test_presets_share_the_base_min_keep(method):
    assert PRESETS[method].build(0.2, DistillConfig(min_keep=7)).min_keep == 7


@pytest.mark.parametrize("budget", [0, -4, 1.5, 0.0, float("nan")])
def test_invalid_budget_names_option(budget):
    with pytest.raises(ValueError, match="--keep"):
        bench_configs(["snapkv"], [budget], DistillConfig())


def test_no_budget_rejected():
    with pytest.raises(ValueError, match="no budget"):
        bench_configs(["snapkv"], [], DistillConfig())


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods are full, promptdistill"):
        select_methods(["streamingllm"])


def test_labels_and_keep_text():
    assert format_keep(0.25) == "0.25"
    assert format_keep(512) == "512"
    assert format_keep(None) == ""
    config = BenchConfig(method="promptdistill", keep=0.5, config=DistillConfig(), variant="L9")
    assert config.label == "promptdistill@0.5/L9"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Eat a sandwich in Dolores Park on a sunny day.", 1.0),
        ("EAT A SANDWICH, DOLORES-PARK!", 0.75),
        ("", 0.0),
        ("Sandwiches at the parks", 0.0),
        ("dolores", 0.25),
    ],
)
def test_needle_score_cases(answer, expected):
    assert needle_score(answer) == expected


def test_needle_score_without_keywords():
    assert needle_score("anything", []) == 0.0


def test_needle_score_custom_keywords_case_insensitive():
    assert needle_score("The code is Blue-42", ["blue", "42"]) == 1.0


@pytest.mark.parametrize(
    ("output", "answers", "expected"),
    [
        ("It was The Beatles.", ["Beatles"], True),
        ("the beatles", ["The Beatles!"], True),
        ("Paul McCartney", ["John Lennon", "Paul McCartney"], True),
        ("Nobody knows.", ["Beatles"], False),
        ("", ["Beatles"], False),
        ("anything at all", [], False),
        ("anything at all", [""], False),
        ("anything at all", ["the", "a"], False),
        ("1,000 metres", ["1000"], True),
    ],
)
def test_is_correct_cases(output, answers, expected):
    assert is_correct(output, answers) is expected


def test_normalize_answer_drops_articles_and_punctuation():
    assert normalize_answer("  The  U.S.A., an Ally!  ") == "usa ally"
